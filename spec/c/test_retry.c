/* Unit tests for the retry decisions (csrc/retry.c): Envoy's retry_on semantics. */
#include "../../csrc/retry.c"
#include "check.h"

int main(void)
{
    struct nu_route_policy none = {0};
    CHECK(!retry_on_response(&none, 503, -1));
    CHECK(!retry_on_reset(&none, RETRY_RESET_CONNECT));

    struct nu_route_policy fivexx = {.retry_on = NU_RETRY_5XX, .num_retries = 1};
    CHECK(retry_on_response(&fivexx, 500, -1));
    CHECK(retry_on_response(&fivexx, 599, -1));
    CHECK(!retry_on_response(&fivexx, 404, -1));
    CHECK(!retry_on_response(&fivexx, 200, GRPC_UNAVAILABLE)); /* gRPC statuses need their own conditions */
    /* every reset counts as a 5xx, a per-try timeout too */
    CHECK(retry_on_reset(&fivexx, RETRY_RESET_CONNECT));
    CHECK(retry_on_reset(&fivexx, RETRY_RESET_REFUSED));
    CHECK(retry_on_reset(&fivexx, RETRY_RESET_OTHER));
    CHECK(retry_on_reset(&fivexx, RETRY_RESET_TIMEOUT));

    struct nu_route_policy gateway = {.retry_on = NU_RETRY_GATEWAY_ERROR, .num_retries = 1};
    CHECK(retry_on_response(&gateway, 502, -1));
    CHECK(retry_on_response(&gateway, 503, -1));
    CHECK(retry_on_response(&gateway, 504, -1));
    CHECK(!retry_on_response(&gateway, 500, -1));

    struct nu_route_policy connect = {.retry_on = NU_RETRY_CONNECT_FAILURE, .num_retries = 1};
    CHECK(retry_on_reset(&connect, RETRY_RESET_CONNECT));
    CHECK(!retry_on_reset(&connect, RETRY_RESET_OTHER));
    CHECK(!retry_on_reset(&connect, RETRY_RESET_TIMEOUT));
    CHECK(!retry_on_response(&connect, 503, -1));

    struct nu_route_policy refused = {.retry_on = NU_RETRY_REFUSED_STREAM, .num_retries = 1};
    CHECK(retry_on_reset(&refused, RETRY_RESET_REFUSED));
    CHECK(!retry_on_reset(&refused, RETRY_RESET_CONNECT));

    struct nu_route_policy four = {.retry_on = NU_RETRY_RETRIABLE_4XX, .num_retries = 1};
    CHECK(retry_on_response(&four, 409, -1));
    CHECK(!retry_on_response(&four, 400, -1));

    int codes[] = {418, 503};
    struct nu_route_policy listed = {.retry_on = NU_RETRY_STATUS_CODES, .status_codes = codes, .n_status_codes = 2};
    CHECK(retry_on_response(&listed, 418, -1));
    CHECK(retry_on_response(&listed, 503, -1));
    CHECK(!retry_on_response(&listed, 502, -1));

    struct nu_route_policy grpc = {.retry_on = NU_RETRY_GRPC_UNAVAILABLE | NU_RETRY_GRPC_RESOURCE_EXHAUSTED,
                                   .num_retries = 2};
    CHECK(retry_on_response(&grpc, 200, GRPC_UNAVAILABLE));
    CHECK(retry_on_response(&grpc, 200, GRPC_RESOURCE_EXHAUSTED));
    CHECK(!retry_on_response(&grpc, 200, GRPC_INTERNAL));
    CHECK(!retry_on_response(&grpc, 200, GRPC_OK));
    CHECK(!retry_on_response(&grpc, 503, -1));
    struct nu_route_policy dl = {.retry_on = NU_RETRY_GRPC_DEADLINE_EXCEEDED | NU_RETRY_GRPC_CANCELLED};
    CHECK(retry_on_response(&dl, 200, GRPC_DEADLINE_EXCEEDED));
    CHECK(retry_on_response(&dl, 200, GRPC_CANCELLED));
    CHECK(retry_on_reset(&dl, RETRY_RESET_TIMEOUT));

    /* backoff: within [0, 25 ms * 2^(n-1)], never above 250 ms */
    for (uint64_t r = 0; r < 5000; r += 7) {
        CHECK(retry_backoff_s(1, r) >= 0 && retry_backoff_s(1, r) <= 0.025 + 1e-9);
        CHECK(retry_backoff_s(2, r) <= 0.05 + 1e-9);
        CHECK(retry_backoff_s(9, r) <= 0.25 + 1e-9);
    }
    CHECK(retry_backoff_s(1, 1000) > 0.0249);
    CHECK_DONE();
}
