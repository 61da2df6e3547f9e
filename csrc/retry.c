#include "retry.h"
#include "config.h"
#include "grpc.h"

#define BACKOFF_BASE_S 0.025
#define BACKOFF_MAX_S 0.25

int retry_on_response(const struct nu_route_policy *p, int http_status, int grpc_status)
{
    unsigned on = p->retry_on;
    if (!on)
        return 0;
    if ((on & NU_RETRY_5XX) && http_status >= 500 && http_status <= 599)
        return 1;
    if ((on & NU_RETRY_GATEWAY_ERROR) && (http_status == 502 || http_status == 503 || http_status == 504))
        return 1;
    if ((on & NU_RETRY_RETRIABLE_4XX) && http_status == 409)
        return 1;
    if (on & NU_RETRY_STATUS_CODES)
        for (size_t i = 0; i < p->n_status_codes; i++)
            if (p->status_codes[i] == http_status)
                return 1;
    switch (grpc_status) {
    case GRPC_CANCELLED:
        return (on & NU_RETRY_GRPC_CANCELLED) != 0;
    case GRPC_DEADLINE_EXCEEDED:
        return (on & NU_RETRY_GRPC_DEADLINE_EXCEEDED) != 0;
    case GRPC_INTERNAL:
        return (on & NU_RETRY_GRPC_INTERNAL) != 0;
    case GRPC_RESOURCE_EXHAUSTED:
        return (on & NU_RETRY_GRPC_RESOURCE_EXHAUSTED) != 0;
    case GRPC_UNAVAILABLE:
        return (on & NU_RETRY_GRPC_UNAVAILABLE) != 0;
    default:
        return 0;
    }
}

int retry_on_reset(const struct nu_route_policy *p, int how)
{
    /* As Envoy counts them: every reset is a "5xx" and a gateway error. */
    unsigned any = NU_RETRY_5XX | NU_RETRY_GATEWAY_ERROR | NU_RETRY_RESET;
    switch (how) {
    case RETRY_RESET_CONNECT:
        return (p->retry_on & (any | NU_RETRY_CONNECT_FAILURE)) != 0;
    case RETRY_RESET_REFUSED:
        return (p->retry_on & (any | NU_RETRY_REFUSED_STREAM)) != 0;
    case RETRY_RESET_TIMEOUT:
        return (p->retry_on & (any | NU_RETRY_GRPC_DEADLINE_EXCEEDED)) != 0;
    default:
        return (p->retry_on & any) != 0;
    }
}

double retry_backoff_s(int n, uint64_t r)
{
    double cap = BACKOFF_BASE_S * (double)(1u << (n > 1 ? (n - 1 < 8 ? n - 1 : 8) : 0));
    if (cap > BACKOFF_MAX_S)
        cap = BACKOFF_MAX_S;
    return cap * (double)(r % 1001) / 1000.0;
}
