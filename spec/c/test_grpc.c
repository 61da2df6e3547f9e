/* Unit tests for the gRPC helpers (csrc/grpc.c). */
#include "../../csrc/grpc.c"
#include "check.h"

static int is_grpc(const char *s)
{
    return grpc_is_grpc_content_type(s, strlen(s));
}

int main(void)
{
    CHECK(is_grpc("application/grpc"));
    CHECK(is_grpc("application/grpc+proto"));
    CHECK(is_grpc("application/grpc;charset=utf-8"));
    CHECK(is_grpc("Application/GRPC"));
    CHECK(!is_grpc("application/grpc-web"));
    CHECK(!is_grpc("application/grpc-web-text+proto"));
    CHECK(!is_grpc("application/json"));
    CHECK(!is_grpc("application/grp"));

    /* Envoy's httpToGrpcStatus (behaviour notes §7.3) */
    CHECK(grpc_status_from_http(400) == 13);
    CHECK(grpc_status_from_http(401) == 16);
    CHECK(grpc_status_from_http(403) == 7);
    CHECK(grpc_status_from_http(404) == 12);
    CHECK(grpc_status_from_http(429) == 14);
    CHECK(grpc_status_from_http(502) == 14);
    CHECK(grpc_status_from_http(503) == 14);
    CHECK(grpc_status_from_http(504) == 14);
    CHECK(grpc_status_from_http(500) == 2);
    CHECK(grpc_status_from_http(200) == 2);

    double t = -1;
    CHECK(grpc_parse_timeout("100m", 4, &t) == 0 && t > 0.0999 && t < 0.1001);
    CHECK(grpc_parse_timeout("5S", 2, &t) == 0 && t == 5);
    CHECK(grpc_parse_timeout("2M", 2, &t) == 0 && t == 120);
    CHECK(grpc_parse_timeout("1H", 2, &t) == 0 && t == 3600);
    CHECK(grpc_parse_timeout("250u", 4, &t) == 0 && t > 0.000249 && t < 0.000251);
    CHECK(grpc_parse_timeout("99999999n", 9, &t) == 0 && t > 0.0999 && t < 0.1001);
    CHECK(grpc_parse_timeout("123456789n", 10, &t) == -1); /* more than 8 digits */
    CHECK(grpc_parse_timeout("5", 1, &t) == -1);
    CHECK(grpc_parse_timeout("5x", 2, &t) == -1);
    CHECK(grpc_parse_timeout("-5S", 3, &t) == -1);
    CHECK(grpc_parse_timeout("S", 1, &t) == -1);

    char out[64];
    size_t n = grpc_message_encode("no route 100%", 13, out, sizeof out);
    CHECK(n == 15 && memcmp(out, "no route 100%25", 15) == 0);
    n = grpc_message_encode("caf\xc3\xa9\n", 6, out, sizeof out);
    CHECK(n == 12 && memcmp(out, "caf%C3%A9%0A", 12) == 0);
    /* never writes past cap, never splits an escape */
    n = grpc_message_encode("\n\n\n", 3, out, 5);
    CHECK(n == 3);
    CHECK_DONE();
}
