/* libFuzzer harness: the downstream HTTP/2 codec (csrc/h2s.c over nghttp2)
 * fed raw client bytes: preface, SETTINGS, HEADERS/CONTINUATION (HPACK),
 * DATA, WINDOW_UPDATE, RST_STREAM, PING, GOAWAY, as they come. A stub stands
 * in for stream.c (see fuzz_conn.h); :path "/h", "/l", "/w", "/r", "/b",
 * "/t", "/e", "/n", "/z", "/k", "/L" pick its answer. */
#include "fuzz_conn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_init();
    struct conn *c = fz_conn();
    if (h2s_attach(c, fz_open, NULL, &fz_h2_opts) != NU_OK)
        abort();
    fz_run(c, data, size);
    return 0;
}
