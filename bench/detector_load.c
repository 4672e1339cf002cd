/* Syscall workload for bench/detector.py, compiled by it with cc (no other use).
 *
 *   detector_load open N PATH         N x (open(PATH, O_RDONLY); close)
 *   detector_load exec N              N x (fork; execve /bin/true; waitpid)
 *   detector_load paced RATE SECS PATH  open+close pairs at RATE syscalls/s for SECS seconds
 *
 * Protocol: prints "ready", waits for one byte on stdin (so the caller's clock starts after
 * this process started), runs, prints "done OPS SECONDS" (its own monotonic clock) and exits.
 * An open+close pair is two syscalls, both traced by the detector.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int pair(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        perror(path);
        return -1;
    }
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s open N PATH | exec N | paced RATE SECS PATH\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    char go;
    printf("ready\n");
    fflush(stdout);
    if (read(0, &go, 1) != 1)
        return 1;
    double start = now();
    long ops = 0;
    if (strcmp(mode, "open") == 0 && argc == 4) {
        long n = atol(argv[2]);
        for (; ops < n; ops++)
            if (pair(argv[3]))
                return 1;
    } else if (strcmp(mode, "exec") == 0) {
        long n = atol(argv[2]);
        char *const args[] = {"true", NULL};
        char *const env[] = {NULL};
        for (; ops < n; ops++) {
            pid_t pid = fork();
            if (pid < 0) {
                perror("fork");
                return 1;
            }
            if (pid == 0) {
                execve("/bin/true", args, env);
                _exit(127);
            }
            int status;
            if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) {
                fprintf(stderr, "/bin/true failed\n");
                return 1;
            }
        }
    } else if (strcmp(mode, "paced") == 0 && argc == 5) {
        double pairs_per_s = atof(argv[2]) / 2.0, secs = atof(argv[3]);
        long total = (long)(pairs_per_s * secs);
        /* Catch up to the schedule in small bursts; sleep when ahead by more than 100 µs. */
        while (ops < total) {
            double late = (now() - start) * pairs_per_s - (double)ops;
            if (late < 1.0) {
                double ahead = (1.0 - late) / pairs_per_s;
                if (ahead > 100e-6) {
                    struct timespec ts = {0, (long)(ahead * 1e9)};
                    nanosleep(&ts, NULL);
                }
                continue;
            }
            long burst = late < 64 ? (long)late : 64;
            for (long i = 0; i < burst && ops < total; i++, ops++)
                if (pair(argv[4]))
                    return 1;
        }
    } else {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    printf("done %ld %.6f\n", ops, now() - start);
    fflush(stdout);
    return 0;
}
