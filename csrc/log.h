/* Leveled error log on stderr, one line per event. Callers put the object
 * context ("[c12 s3]") in the message where the outcome is decided. */
#ifndef NUNCIO_LOG_H
#define NUNCIO_LOG_H

enum nu_log_level {
    NU_LOG_DEBUG = 0,
    NU_LOG_INFO,
    NU_LOG_WARN,
    NU_LOG_ERROR,
};

extern int nu_log_level;
extern int nu_log_level_locked; /* set by --log-level: the config's log_level does not apply */

#define nu_log_enabled(level) ((level) >= nu_log_level)

void nu_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int nu_log_parse_level(const char *name); /* -1 if unknown */
const char *nu_log_level_name(int level);

#endif
