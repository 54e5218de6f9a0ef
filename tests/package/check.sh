#!/usr/bin/env bash
# The installed package as a user meets it: `check.sh STEP SRC_DIR BUILD_DIR`, one CTest entry per
# step (cmake/package_tests.cmake). `install` installs the build into BUILD_DIR/package/prefix, a
# prefix of its own made afresh; the other steps check what is there:
#   exports    libeventwire.so exports exactly the functions the public headers declare
#   headers    each installed header compiles alone as C11 and as C++, and a C++ program links
#   pkgconfig  examples/*.c built with `pkg-config --cflags --libs eventwire` (and --static), run
#   cmake      examples/*.c built by a CMake project with find_package(eventwire), run
#   programs   ewctl --version, the services, the ewctl(1) man page
set -euo pipefail

step=$1 src=$2 bin=$3
work=$bin/package
prefix=$work/prefix
CC=${CC:-cc}
CXX=${CXX:-g++}

fail() { echo "check.sh $step: $*" >&2; exit 1; }

libdir() { # the folder the library was installed into (lib, or lib/<multiarch> under /usr)
    local f
    f=$(find "$prefix" -name 'libeventwire.so.*' -type f | head -1)
    [ -n "$f" ] || fail "no libeventwire.so.* under $prefix (did package.install run?)"
    dirname "$f"
}

# Runs an example the way its comment says it runs and checks what it did. A new example gets a
# case here; one without a case must exit 0 on its own within a minute.
run_example() {
    local name=$1 exe=$2 out err
    out=$(mktemp) err=$(mktemp)
    case $name in
    registration)
        (cd "$(dirname "$out")" && timeout 60 "$exe" 3 >"$out" 2>"$err") ||
            { cat "$err" >&2; fail "$exe 3 failed"; }
        [ "$(grep -c '"type":"user.registered"' "$out")" -eq 3 ] ||
            { cat "$out" "$err" >&2; fail "$exe: not 3 user.registered events on stdout"; }
        grep -q 'profiles marked 3, welcome emails 3, users counted 3' "$err" ||
            { cat "$err" >&2; fail "$exe: the flow did not complete"; }
        ;;
    greeter)
        # A service: it runs in a folder of its own on the SQLite bus (the defaults), greets a
        # user registered there with the installed ewctl, and closes cleanly on SIGTERM.
        local dir pid uid status=0
        dir=$(mktemp -d)
        (cd "$dir" && exec timeout 120 "$exe") >"$out" 2>"$err" &
        pid=$!
        wait_for_line '"msg":"ready' "$err" "$pid" || { kill "$pid" 2>/dev/null; fail "$exe did not start"; }
        uid=$(cat /proc/sys/kernel/random/uuid)
        (cd "$dir" && "$prefix/bin/ewctl" publish user.registered --subject "$uid" \
            --data "{\"user_id\":\"$uid\",\"email\":\"ada@example.com\",\"username\":\"ada\",\"roles\":[\"user\"]}" \
            >/dev/null) || { kill "$pid"; fail "ewctl publish failed"; }
        wait_for_line "greeted user $uid" "$err" "$pid" || { kill "$pid" 2>/dev/null; fail "$exe greeted nobody"; }
        kill -TERM "$pid"
        wait "$pid" || status=$?
        [ "$status" -eq 0 ] || { cat "$err" >&2; fail "$exe exited $status after SIGTERM"; }
        grep -q '"msg":"closed"' "$err" || { cat "$err" >&2; fail "$exe did not close cleanly"; }
        grep -q '^To: ada@example.com' "$dir"/var/greetings/*.eml ||
            fail "$exe wrote no mail into var/greetings"
        rm -rf "$dir"
        ;;
    *)
        local dir
        dir=$(mktemp -d)
        (cd "$dir" && timeout 60 "$exe" >"$out" 2>"$err") ||
            { cat "$out" "$err" >&2; fail "$exe failed"; }
        rm -rf "$dir"
        ;;
    esac
    echo "ok: $exe"
    rm -f "$out" "$err"
}

examples() { ls "$src"/examples/*.c; }

# Waits up to 60 s for a line holding TEXT in FILE, written by process PID while it runs.
wait_for_line() {
    local text=$1 file=$2 pid=$3
    for _ in $(seq 600); do
        grep -qF -- "$text" "$file" && return 0
        kill -0 "$pid" 2>/dev/null || { cat "$file" >&2; return 1; }
        sleep 0.1
    done
    cat "$file" >&2
    return 1
}

case $step in
install)
    rm -rf "$work"
    mkdir -p "$work"
    cmake --install "$bin" --prefix "$prefix" >"$work/install.log" || { cat "$work/install.log"; exit 1; }
    echo "installed into $prefix:"
    (cd "$prefix" && find . -type f | sort)
    ;;

exports)
    lib=$(libdir)/libeventwire.so
    [ "$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')" = libeventwire.so.0 ] ||
        fail "$lib: SONAME is not libeventwire.so.0"
    # What the installed headers declare, as the compiler sees them (macros expanded): every
    # function declaration GCC's -aux-info lists from eventwire/*.h, less the static inline ones.
    tu=$work/all_headers.c
    for h in "$prefix"/include/eventwire/*.h; do echo "#include <eventwire/$(basename "$h")>"; done >"$tu"
    ${AUX_CC:-gcc} -std=c11 -fsyntax-only -I"$prefix/include" -aux-info "$work/decls.aux" "$tu"
    grep '/eventwire/[^/:]*:[0-9]*:[A-Z]* \*/ ' "$work/decls.aux" | grep -v '\*/ static ' |
        sed -n 's/^\/\* [^ ]* \*\/ [^(]*[ *]\(ew_[A-Za-z0-9_]*\) (.*/\1/p' | sort -u >"$work/declared"
    nm -D --defined-only "$lib" | awk '{print $3}' | sed 's/@.*//' | sort -u >"$work/exported"
    [ -s "$work/declared" ] || fail "no function found in the installed headers"
    status=0
    if comm -13 "$work/declared" "$work/exported" | grep .; then
        echo "^ exported by $lib but declared in no public header" >&2
        status=1
    fi
    if comm -23 "$work/declared" "$work/exported" | grep .; then
        echo "^ declared in a public header but not defined in $lib" >&2
        status=1
    fi
    [ $status -eq 0 ] || fail "the library's exports and the public headers differ"
    echo "$(wc -l <"$work/exported") functions exported, each declared in include/eventwire/"
    ;;

headers)
    for h in "$prefix"/include/eventwire/*.h; do
        name=eventwire/$(basename "$h")
        echo "#include <$name>" | $CC -std=c11 -Wall -Wextra -Werror -pedantic -Wstrict-prototypes \
            -fsyntax-only -I"$prefix/include" -x c - || fail "$name does not compile alone as C11"
        echo "#include <$name>" | $CXX -Wall -Wextra -Werror -pedantic -fsyntax-only \
            -I"$prefix/include" -x c++ - || fail "$name does not compile alone as C++"
    done
    # extern "C" in place: a C++ program links to the C library.
    cat >"$work/cxx_user.cc" <<'CXX'
#include <cstdio>
#include <eventwire/error.h>
#include <eventwire/version.h>
int main()
{
    std::printf("%s %s\n", ew_version(), ew_err_name(EW_ENOMEM));
    return ew_version_number() == EW_VERSION_NUMBER ? 0 : 1;
}
CXX
    lib=$(libdir)
    $CXX -Wall -Wextra -Werror "$work/cxx_user.cc" -I"$prefix/include" -L"$lib" -leventwire \
        -Wl,-rpath,"$lib" -o "$work/cxx_user"
    "$work/cxx_user"
    echo "$(ls "$prefix"/include/eventwire/*.h | wc -l) headers compile alone as C11 and C++"
    ;;

pkgconfig)
    lib=$(libdir)
    export PKG_CONFIG_PATH=$lib/pkgconfig
    [ "$(pkg-config --modversion eventwire)" = "$(sed -n 's/^#define EW_VERSION_STRING "\(.*\)".*/\1/p' \
        "$prefix/include/eventwire/version.h")" ] || fail "eventwire.pc's version is not version.h's"
    out=$work/pkgconfig
    mkdir -p "$out"
    for c in $(examples); do
        name=$(basename "$c" .c)
        # A user's plain build: no _GNU_SOURCE, no eventwire source tree, warnings on.
        # shellcheck disable=SC2046
        $CC -std=c11 -Wall -Werror -pedantic "$c" -o "$out/$name" $(pkg-config --cflags --libs eventwire) \
            -Wl,-rpath,"$lib"
        readelf -d "$out/$name" | grep -q 'NEEDED.*libeventwire\.so\.0' ||
            fail "$out/$name is not linked to libeventwire.so.0"
        run_example "$name" "$out/$name"
        # Static: libeventwire.a, the modules of Requires.private (shared: `pkg-config --static`
        # would also want their own static libraries, which Debian's libpq.pc names but libpq-dev
        # does not ship) and Libs.private.
        requires=$(pkg-config --print-requires-private eventwire | awk '{print $1}')
        libs_private=$(sed -n 's/^Libs.private: *//p' "$lib/pkgconfig/eventwire.pc")
        # shellcheck disable=SC2046,SC2086
        $CC -std=c11 -Wall -Werror -pedantic "$c" -o "$out/$name-static" $(pkg-config --cflags eventwire) \
            "$lib/libeventwire.a" $(pkg-config --libs $requires) $libs_private
        if readelf -d "$out/$name-static" | grep -q 'NEEDED.*libeventwire'; then
            fail "$out/$name-static needs libeventwire.so"
        fi
        run_example "$name" "$out/$name-static"
    done
    ;;

cmake)
    out=$work/cmake
    rm -rf "$out"
    cmake -S "$src/tests/package/consumer" -B "$out" -DCMAKE_PREFIX_PATH="$prefix" \
        -DEW_EXAMPLES="$(examples | tr '\n' ';')" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$out.log" ||
        { cat "$out.log"; exit 1; }
    cmake --build "$out" -j 2 >>"$out.log" || { cat "$out.log"; exit 1; }
    for c in $(examples); do
        name=$(basename "$c" .c)
        readelf -d "$out/$name" | grep -q 'NEEDED.*libeventwire\.so\.0' ||
            fail "$out/$name is not linked to libeventwire.so.0"
        run_example "$name" "$out/$name"
        run_example "$name" "$out/$name-static"
    done
    ;;

programs)
    version=$(sed -n 's/^#define EW_VERSION_STRING "\(.*\)".*/\1/p' "$prefix/include/eventwire/version.h")
    [ "$("$prefix/bin/ewctl" --version)" = "ewctl $version" ] || fail "ewctl --version is not 'ewctl $version'"
    for s in "$src"/services/*/; do
        s=$(basename "$s")
        [ "$s" = common ] && continue
        [ -x "$prefix/bin/$s" ] || fail "$s is not installed in bin/"
    done
    page=$prefix/share/man/man1/ewctl.1
    [ -f "$page" ] || fail "no ewctl(1) man page"
    grep -q "^\.TH EWCTL 1 .*\"eventwire $version\"" "$page" || fail "ewctl.1 does not say eventwire $version"
    # The man page names every command of `ewctl help` and every flag of `ewctl CMD --help`.
    man_text=$(sed 's/\\-/-/g; s/\\f[BIRP]//g' "$page")
    for cmd in $("$prefix/bin/ewctl" help | sed -n 's/^  \([a-z][a-z-]*\) .*/\1/p'); do
        grep -q "ewctl $cmd" <<<"$man_text" || fail "ewctl.1 does not describe 'ewctl $cmd'"
        for flag in $("$prefix/bin/ewctl" "$cmd" --help 2>&1 | grep -o -- '--[a-z][a-z-]*' | sort -u); do
            grep -q -- "$flag" <<<"$man_text" || fail "ewctl.1 does not describe 'ewctl $cmd $flag'"
        done
    done
    echo "ewctl $version, the services and ewctl(1) are installed"
    ;;

*)
    fail "unknown step"
    ;;
esac
