/* What the HTTP/1.1 codecs (h1s downstream, h1c upstream) share: field
 * checks, writing a header field, reading a length. */
#ifndef NUNCIO_H1_COMMON_H
#define NUNCIO_H1_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "hdr.h"

/* RFC 9110 token characters only (a field name, a method). */
int h1_is_token(const char *p, size_t n);
/* Visible characters only, no space (a request target). */
int h1_is_visible(const char *p, size_t n);
/* No CR, LF or NUL: the bytes cannot end a line early. */
int h1_value_safe(const char *p, size_t n);
/* Can this field go on an HTTP/1 wire as it is? A name that is not a token or
 * a value with CR, LF or NUL (a filter or an HTTP/2 peer could make one)
 * would end the line, or the head, early. */
int h1_field_safe(const struct hdr_entry *e);
/* Appends "name: value\r\n". 0 or NU_ERR_NOMEM. */
int h1_put_field(struct buf *b, const struct hdr_entry *e);
/* A Content-Length or chunk-free decimal: digits only, at most 18 of them. */
int h1_parse_length(const char *p, size_t n, uint64_t *out);

#endif
