/* Downstream HTTP/2 codec: an nghttp2 server session on an accepted conn. */
#ifndef NUNCIO_H2S_H
#define NUNCIO_H2S_H

struct conn;
struct exchange;

/* Makes the exchange for a new downstream stream; NULL refuses it. */
typedef struct exchange *(*h2s_open_fn)(void *arg, struct conn *c);

/* idle_timeout: a connection without a stream that long gets GOAWAY and is
 * closed; header_timeout: the longest a client may take over the HTTP/2 preface
 * and SETTINGS, and over each header block (seconds; 0 turns either off). */
int h2s_attach(struct conn *c, h2s_open_fn open, void *arg, unsigned max_streams, double idle_timeout,
               double header_timeout);

#endif
