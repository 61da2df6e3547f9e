/* libFuzzer harness: the downstream HTTP/1.1 request path (csrc/h1s.c:
 * the raw head scanner, http-parser, the head checks, Host/absolute-form to
 * :authority, bodies by length and chunked, trailers, pipelining, Expect:
 * 100-continue, and the hand-over to HTTP/2 on the h2c preface) fed raw
 * client bytes. A stub stands in for stream.c (see fuzz_conn.h). The input's
 * length picks enable_http10 (odd: on), so both answers to HTTP/1.0 are reached. */
#include "fuzz_conn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_init();
    struct conn *c = fz_conn();
    struct h1s_opts o = {
        .idle_timeout = 300,
        .header_timeout = 10,
        .enable_http10 = (int)(size & 1),
        .server_name = "nuncio-fuzz",
        .to_h2 = fz_attach_h2,
        .to_h2_arg = NULL,
    };
    if (h1s_attach(c, fz_open, NULL, &o) != NU_OK)
        abort();
    fz_run(c, data, size);
    return 0;
}
