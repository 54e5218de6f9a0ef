/* ew-kafka-mock — a Kafka cluster for the tests: librdkafka's mock cluster, which speaks the
 * Kafka protocol over TCP on loopback, in a process of its own, so every client reaches it as
 * it would a real broker. It writes its bootstrap address to DIR/kafka.url and takes commands,
 * one per line, from the FIFO DIR/kafka.ctl:
 *   down ID | up ID          take broker ID (1..N) down or bring it back
 *   topic NAME PARTITIONS    create a topic
 *   quit                     stop
 * It also stops on SIGTERM or SIGINT. Three brokers by default: librdkafka's idempotent
 * producer has been seen to hang against a one-broker mock. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

/* TCP_NODELAY on every connection the mock brokers accept, as a real Kafka broker sets it: the
 * mock's sockets keep Nagle's algorithm, so the second of two pipelined responses on one
 * connection waited for the client's delayed ACK (40 ms) and producers with requests in flight
 * ran at a hundredth of their speed. librdkafka's mock calls accept() from this process, so
 * these definitions take its place. */
static int nodelay(int fd)
{
    int one = 1;
    if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int accept(int s, __SOCKADDR_ARG addr, socklen_t *restrict len)
{
    int (*real)(int, __SOCKADDR_ARG, socklen_t *restrict);
    *(void **)&real = dlsym(RTLD_NEXT, "accept");
    return real ? nodelay(real(s, addr, len)) : (errno = ENOSYS, -1);
}

int accept4(int s, __SOCKADDR_ARG addr, socklen_t *restrict len, int flags)
{
    int (*real)(int, __SOCKADDR_ARG, socklen_t *restrict, int);
    *(void **)&real = dlsym(RTLD_NEXT, "accept4");
    return real ? nodelay(real(s, addr, len, flags)) : (errno = ENOSYS, -1);
}

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static int write_file(const char *path, const char *text)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return -1;
    fprintf(f, "%s\n", text);
    if (fclose(f) != 0) return -1;
    return rename(tmp, path);
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    int brokers = 3;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc)
            dir = argv[++i];
        else if (strcmp(argv[i], "--brokers") == 0 && i + 1 < argc)
            brokers = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: ew-kafka-mock --dir DIR [--brokers N]\n");
            return 2;
        }
    }
    if (!dir || brokers < 1 || brokers > 9) {
        fprintf(stderr, "usage: ew-kafka-mock --dir DIR [--brokers N]\n");
        return 2;
    }
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        fprintf(stderr, "ew-kafka-mock: %s\n", errstr);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
    if (!mc) {
        fprintf(stderr, "ew-kafka-mock: cannot create the mock cluster\n");
        return 1;
    }
    char ctl[4096], url[4096];
    snprintf(ctl, sizeof ctl, "%s/kafka.ctl", dir);
    snprintf(url, sizeof url, "%s/kafka.url", dir);
    unlink(ctl);
    if (mkfifo(ctl, 0600) != 0) {
        fprintf(stderr, "ew-kafka-mock: mkfifo %s: %s\n", ctl, strerror(errno));
        return 1;
    }
    /* without SA_RESTART, so that the read of the FIFO below returns when a signal comes */
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (write_file(url, rd_kafka_mock_cluster_bootstraps(mc)) != 0) {
        fprintf(stderr, "ew-kafka-mock: cannot write %s\n", url);
        return 1;
    }
    fprintf(stderr, "ew-kafka-mock: %d brokers at %s\n", brokers,
            rd_kafka_mock_cluster_bootstraps(mc));
    /* O_RDWR: the FIFO never reports end-of-file when a writer closes it. */
    int fd = open(ctl, O_RDWR);
    FILE *in = fd >= 0 ? fdopen(fd, "r") : NULL;
    if (!in) {
        fprintf(stderr, "ew-kafka-mock: cannot open %s\n", ctl);
        return 1;
    }
    char line[512];
    while (!stop && fgets(line, sizeof line, in)) {
        char name[256];
        int id, parts;
        if (sscanf(line, "down %d", &id) == 1) {
            rd_kafka_mock_broker_set_down(mc, id);
        } else if (sscanf(line, "up %d", &id) == 1) {
            rd_kafka_mock_broker_set_up(mc, id);
        } else if (sscanf(line, "topic %255s %d", name, &parts) == 2) {
            rd_kafka_mock_topic_create(mc, name, parts, brokers < 3 ? brokers : 3);
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        } else {
            fprintf(stderr, "ew-kafka-mock: unknown command: %s", line);
        }
    }
    fclose(in);
    unlink(ctl);
    unlink(url);
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return 0;
}
