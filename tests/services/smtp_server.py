"""An SMTP server for the notification-service tests (Debian's python3-aiosmtpd), on loopback.

    smtp_server.py MODE OUT_DIR [CERT KEY]

MODE starttls: offers STARTTLS with CERT/KEY and requires it, and AUTH only after it (login
"mailer", password "s3cret"). MODE plain-auth: no TLS at all, and AUTH offered in the clear — what
a server (or someone between) that strips STARTTLS looks like. MODE plain: no TLS, no AUTH (a
relay that takes anything). Every AUTH attempt appends a line
to OUT_DIR/auth.log ("LOGIN tls=yes|no ok|refused"), every message is written to
OUT_DIR/N.msg (a header of the envelope and the session, a blank line, the message). Prints its
port on the first line of stdout once it accepts connections; runs until SIGTERM.
"""
import os
import signal
import socket
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

mode, out = sys.argv[1], sys.argv[2]
count = 0
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGINT])


def log_auth(line):
    with open(os.path.join(out, "auth.log"), "a") as f:
        f.write(line + "\n")


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login == b"mailer"
          and auth_data.password == b"s3cret")
    login = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "?"
    log_auth("%s tls=%s %s" % (login, "yes" if session.ssl else "no", "ok" if ok else "refused"))
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


class Handler:
    async def handle_DATA(self, server, session, envelope):
        global count
        count += 1
        head = "from: %s\nrcpt: %s\ntls: %s\nauth: %s\n\n" % (
            envelope.mail_from, ",".join(envelope.rcpt_tos), "yes" if session.ssl else "no",
            session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else "-")
        path = os.path.join(out, "%d.msg" % count)
        with open(path + ".tmp", "wb") as f:
            f.write(head.encode() + envelope.original_content)
        os.rename(path + ".tmp", path)
        return "250 OK queued"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


if mode == "starttls":
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    opts = dict(tls_context=ctx, require_starttls=True, auth_required=True, auth_require_tls=True)
elif mode == "plain-auth":
    opts = dict(auth_required=True, auth_require_tls=False)
elif mode == "plain":
    opts = dict(auth_required=False)
else:
    sys.exit("smtp_server.py: MODE is starttls, plain-auth or plain")

controller = Controller(Handler(), hostname="127.0.0.1", port=free_port(),
                        authenticator=authenticator, ready_timeout=10, **opts)
controller.start()
print(controller.port, flush=True)
signal.sigwait([signal.SIGTERM, signal.SIGINT])
controller.stop()
