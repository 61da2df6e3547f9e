#include "hdr.h"
#include "nuncio.h"

#include <stdlib.h>
#include <string.h>

static int name_eq(const struct hdr_entry *e, const char *name, size_t nlen)
{
    if (e->nlen != nlen)
        return 0;
    for (size_t i = 0; i < nlen; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if ((unsigned char)e->name[i] != c)
            return 0;
    }
    return 1;
}

static int entry_fill(struct hdr_entry *e, const char *name, size_t nlen, const char *value, size_t vlen)
{
    if (nlen > UINT32_MAX / 2 || vlen > UINT32_MAX / 2)
        return NU_ERR_LIMIT;
    char *p = malloc(nlen + vlen + 2);
    if (!p)
        return NU_ERR_NOMEM;
    for (size_t i = 0; i < nlen; i++) {
        char c = name[i];
        p[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    p[nlen] = '\0';
    memcpy(p + nlen + 1, value, vlen);
    p[nlen + 1 + vlen] = '\0';
    e->name = p;
    e->value = p + nlen + 1;
    e->nlen = (uint32_t)nlen;
    e->vlen = (uint32_t)vlen;
    return NU_OK;
}

int hdr_add(struct hdr_map *m, const char *name, size_t nlen, const char *value, size_t vlen)
{
    if (m->n == m->cap) {
        uint32_t cap = m->cap ? m->cap * 2 : 16;
        struct hdr_entry *v = realloc(m->v, cap * sizeof *v);
        if (!v)
            return NU_ERR_NOMEM;
        m->v = v;
        m->cap = cap;
    }
    int rc = entry_fill(&m->v[m->n], name, nlen, value, vlen);
    if (rc)
        return rc;
    m->n++;
    m->bytes += nlen + vlen;
    return NU_OK;
}

int hdr_find(const struct hdr_map *m, const char *name, size_t nlen, int k)
{
    for (uint32_t i = 0; i < m->n; i++)
        if (name_eq(&m->v[i], name, nlen) && k-- == 0)
            return (int)i;
    return -1;
}

int hdr_count(const struct hdr_map *m, const char *name, size_t nlen)
{
    int c = 0;
    for (uint32_t i = 0; i < m->n; i++)
        c += name_eq(&m->v[i], name, nlen);
    return c;
}

const char *hdr_get(const struct hdr_map *m, const char *name, size_t nlen, size_t *vlen)
{
    int i = hdr_find(m, name, nlen, 0);
    if (i < 0)
        return NULL;
    if (vlen)
        *vlen = m->v[i].vlen;
    return m->v[i].value;
}

static void remove_at(struct hdr_map *m, uint32_t i)
{
    m->bytes -= m->v[i].nlen + m->v[i].vlen;
    free(m->v[i].name);
    memmove(&m->v[i], &m->v[i + 1], (m->n - i - 1) * sizeof m->v[0]);
    m->n--;
}

int hdr_remove(struct hdr_map *m, const char *name, size_t nlen)
{
    int removed = 0;
    for (uint32_t i = 0; i < m->n;) {
        if (name_eq(&m->v[i], name, nlen)) {
            remove_at(m, i);
            removed++;
        } else {
            i++;
        }
    }
    return removed;
}

int hdr_set(struct hdr_map *m, const char *name, size_t nlen, const char *value, size_t vlen)
{
    int first = hdr_find(m, name, nlen, 0);
    if (first < 0)
        return hdr_add(m, name, nlen, value, vlen);
    struct hdr_entry e;
    int rc = entry_fill(&e, name, nlen, value, vlen);
    if (rc)
        return rc;
    m->bytes -= m->v[first].nlen + m->v[first].vlen;
    free(m->v[first].name);
    m->v[first] = e;
    m->bytes += nlen + vlen;
    for (uint32_t i = (uint32_t)first + 1; i < m->n;) {
        if (name_eq(&m->v[i], name, nlen))
            remove_at(m, i);
        else
            i++;
    }
    return NU_OK;
}

void hdr_clear(struct hdr_map *m)
{
    for (uint32_t i = 0; i < m->n; i++)
        free(m->v[i].name);
    free(m->v);
    memset(m, 0, sizeof *m);
}
