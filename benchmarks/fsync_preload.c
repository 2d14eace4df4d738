/* LD_PRELOAD shim that makes dcmtk's storescp durable like magickbox, for a fair
 * durable-vs-durable benchmark: every file opened for writing below $FSYNC_PRELOAD_DIR
 * is fsync'd before fclose(), and its directory is fsync'd after.  Built by
 * benchmarks/bench_receive.py with the system C compiler; never used in production.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SLOTS 256
static struct { FILE *f; char *path; } slots[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int wanted(const char *path, const char *mode) {
    const char *dir = getenv("FSYNC_PRELOAD_DIR");
    if (!dir || !path || !mode || !(strchr(mode, 'w') || strchr(mode, 'a'))) return 0;
    return strncmp(path, dir, strlen(dir)) == 0;
}

static void remember(FILE *f, const char *path) {
    pthread_mutex_lock(&lock);
    for (int i = 0; i < SLOTS; i++)
        if (!slots[i].f) { slots[i].f = f; slots[i].path = strdup(path); break; }
    pthread_mutex_unlock(&lock);
}

static char *forget(FILE *f) {
    char *path = NULL;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < SLOTS; i++)
        if (slots[i].f == f) { path = slots[i].path; slots[i].f = NULL; slots[i].path = NULL; break; }
    pthread_mutex_unlock(&lock);
    return path;
}

#define OPENER(name)                                                                  \
    FILE *name(const char *path, const char *mode) {                                  \
        static FILE *(*real)(const char *, const char *);                            \
        if (!real) real = (FILE *(*)(const char *, const char *))dlsym(RTLD_NEXT, #name); \
        FILE *f = real(path, mode);                                                    \
        if (f && wanted(path, mode)) remember(f, path);                                \
        return f;                                                                      \
    }
OPENER(fopen)
OPENER(fopen64)

int fclose(FILE *f) {
    static int (*real)(FILE *);
    if (!real) real = (int (*)(FILE *))dlsym(RTLD_NEXT, "fclose");
    char *path = forget(f);
    if (path) { fflush(f); fsync(fileno(f)); }
    int rc = real(f);
    if (path) {
        char *copy = strdup(path);
        int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
        if (dfd >= 0) { fsync(dfd); close(dfd); }
        free(copy);
        free(path);
    }
    return rc;
}
