#include "log.h"
#include "nuncio.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int nu_log_level = NU_LOG_INFO;
int nu_log_level_locked;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

const char *nu_log_level_name(int level)
{
    if (level < 0 || level >= (int)NU_ARRAY_LEN(level_names))
        return "?";
    return level_names[level];
}

int nu_log_parse_level(const char *name)
{
    for (size_t i = 0; i < NU_ARRAY_LEN(level_names); i++)
        if (strcmp(name, level_names[i]) == 0)
            return (int)i;
    return -1;
}

void nu_log(int level, const char *fmt, ...)
{
    if (!nu_log_enabled(level))
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ [%s] ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                     nu_log_level_name(level));
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    /* One write per line so lines from several threads never interleave. */
    fwrite(line, 1, len, stderr);
}

const char *nu_strerror(int err)
{
    switch (err) {
    case NU_OK:
        return "ok";
    case NU_ERR_NOMEM:
        return "out of memory";
    case NU_ERR_IO:
        return "i/o error";
    case NU_ERR_PROTO:
        return "protocol error";
    case NU_ERR_TIMEOUT:
        return "timeout";
    case NU_ERR_CONFIG:
        return "configuration error";
    case NU_ERR_LUA:
        return "filter error";
    case NU_ERR_CLOSED:
        return "closed";
    case NU_ERR_LIMIT:
        return "limit exceeded";
    case NU_ERR_AGAIN:
        return "would block";
    case NU_ERR_TLS:
        return "TLS error";
    }
    return "unknown error";
}
