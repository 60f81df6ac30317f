/* The compiled tokenizer: one pass over a text's code points (translate, split, look up, pad), with the GIL
 * released for whole batches. It implements the subset of tokenizer specs that map ASCII bytes one to one
 * (Keras's filters, ASCII-only lower-casing, a one-byte split character) plus Reuters' per-character
 * non-ASCII replacement, and start and end ids around each text; service/core/tokenizer.py decides when a spec fits and otherwise uses its pure-Python
 * reference, which this module must match id for id (tests/service/test_fast_tokenizer.py). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define NOT_FOUND INT64_MIN

#define DELETE 0x80  /* a map value: the ASCII character is deleted (tokenizer.DELETE) */
#define HOT_WORDS 16384  /* the most frequent words get a table of their own that stays in the CPU cache */

typedef struct {
    uint32_t tag, len;  /* tag 0: an empty slot */
    uint64_t head;      /* the word's first 8 bytes: most words are compared without touching the key arena */
    uint32_t off;
    int32_t id;
} Slot;

typedef struct {
    Slot *slots;
    size_t mask;
} Table;

typedef struct {
    PyObject_HEAD
    unsigned char map[128];  /* ASCII byte -> byte after translation */
    unsigned char sep;
    int ascii_only;          /* a text with a non-ASCII character is left to the reference (returns 1) */
    char *repl;              /* UTF-8 replacement for each non-ASCII character, or NULL */
    Py_ssize_t repl_len;
    int has_start, has_end;
    int64_t start_id, end_id, oov_char, unknown_id;  /* oov_char/unknown_id: NOT_FOUND when absent / dropped */
    Table hot, cold;  /* words in rank order: the first HOT_WORDS, then the rest */
    char *keys;
} Tok;

typedef struct {
    int want_spans;
    int64_t *ids, *spans;  /* spans: 2 per id, character offsets */
    size_t n, idcap, spancap;
    unsigned char *word;
    size_t wlen, wcap;
    int in_word;  /* a word may have no bytes: a non-ASCII one whose replacement is "" */
    int64_t word_end;  /* after the word's last kept character: deleted ones end no word and join none */
    int64_t words;     /* the text's words, found or not (dropped ones too): drift's OOV share divides by it */
} Scratch;

/* The bytes of a word in a buffer with at least 8 readable bytes after it: whole 8-byte loads, masked,
 * so no load waits on a variable-length copy. */
static inline uint64_t tail_of(const unsigned char *s, size_t n) {
    uint64_t w;
    memcpy(&w, s, 8);
    return n ? w & (~0ULL >> (64 - 8 * n)) : 0;
}

/* Eight bytes per step (words are short, so usually one step): the high half picks the slot, the low half
 * is the tag. */
static uint64_t hash_bytes(const unsigned char *s, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ n, w;
    for (; n >= 8; s += 8, n -= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
    }
    h = (h ^ tail_of(s, n)) * 0xC4CEB9FE1A85EC53ULL;
    return h ^ (h >> 29);
}

static int64_t find(const Table *t, const char *keys, uint64_t h, uint64_t head, const unsigned char *key,
                    size_t len) {
    uint32_t tag = (uint32_t)h | 1;
    for (size_t i = (h >> 32) & t->mask;; i = (i + 1) & t->mask) {
        const Slot *s = &t->slots[i];
        if (s->tag == 0) return NOT_FOUND;
        if (s->tag == tag && s->len == len && s->head == head
            && (len <= 8 || memcmp(keys + s->off + 8, key + 8, len - 8) == 0))
            return s->id;
    }
}

static int64_t lookup(const Tok *t, const unsigned char *key, size_t len) {
    uint64_t h = hash_bytes(key, len), head = tail_of(key, len < 8 ? len : 8);
    int64_t id = find(&t->hot, t->keys, h, head, key, len);
    return id != NOT_FOUND ? id : find(&t->cold, t->keys, h, head, key, len);
}

static int table_new(Table *t, size_t words) {
    size_t cap = 16;
    while (cap < words + words / 2 + 1) cap *= 2;  /* load <= 2/3: short probes, a small hot table */
    t->slots = PyMem_RawCalloc(cap, sizeof(Slot));
    t->mask = cap - 1;
    return t->slots ? 0 : -1;
}

/* key: in the arena, which has 8 bytes of slack at its end. */
static void table_put(Table *t, const unsigned char *key, size_t len, uint32_t off, int32_t id) {
    uint64_t h = hash_bytes(key, len);
    size_t i = (h >> 32) & t->mask;
    while (t->slots[i].tag) i = (i + 1) & t->mask;  /* dict keys are unique */
    t->slots[i] = (Slot){(uint32_t)h | 1, (uint32_t)len, tail_of(key, len < 8 ? len : 8), off, id};
}

static int grow(void **buf, size_t *cap, size_t need, size_t item) {
    if (need <= *cap) return 0;
    size_t cap2 = *cap ? *cap : 256;
    while (cap2 < need) cap2 *= 2;
    void *p = realloc(*buf, cap2 * item);
    if (!p) return -1;
    *buf = p;
    *cap = cap2;
    return 0;
}

/* Room for every id and word byte a text of n characters can give, so the scan never checks capacity: at
 * most one word per two characters (plus the start and end ids), each character at most 4 UTF-8 bytes or
 * repl_len. */
static int reserve(const Tok *t, Scratch *sc, size_t n) {
    size_t ids = n / 2 + 3, bytes = n * (t->repl_len > 4 ? (size_t)t->repl_len : 4) + 8;  /* 8: tail_of's slack */
    if (grow((void **)&sc->ids, &sc->idcap, ids, sizeof(int64_t))) return -1;
    if (sc->want_spans && grow((void **)&sc->spans, &sc->spancap, ids, 2 * sizeof(int64_t))) return -1;
    return grow((void **)&sc->word, &sc->wcap, bytes, 1);
}

static inline void push_id(Scratch *sc, int64_t id, int64_t start, int64_t end) {
    sc->ids[sc->n] = id;
    if (sc->want_spans) {
        sc->spans[2 * sc->n] = start;
        sc->spans[2 * sc->n + 1] = end;
    }
    sc->n++;
}

/* The word in sc->word ends: look it up and apply the reference's rules (tokenizer.Tokenizer.encode). */
static inline void end_word(const Tok *t, Scratch *sc, int64_t start, int64_t *oov) {
    if (!sc->in_word) return;
    int64_t end = sc->word_end;
    int64_t id = lookup(t, sc->word, sc->wlen);
    sc->wlen = sc->in_word = 0;
    sc->words++;
    if (id == NOT_FOUND) id = t->unknown_id;
    if (id == NOT_FOUND || id == -1) {
        (*oov)++;
        return;
    }
    if (id == t->oov_char) (*oov)++;
    push_id(sc, id, start, end);
}

static inline size_t utf8_put(unsigned char *out, Py_UCS4 c) {
    if (c < 0x800) {
        out[0] = 0xC0 | (c >> 6), out[1] = 0x80 | (c & 0x3F);
        return 2;
    }
    if (c < 0x10000) {
        out[0] = 0xE0 | (c >> 12), out[1] = 0x80 | ((c >> 6) & 0x3F), out[2] = 0x80 | (c & 0x3F);
        return 3;
    }
    out[0] = 0xF0 | (c >> 18), out[1] = 0x80 | ((c >> 12) & 0x3F), out[2] = 0x80 | ((c >> 6) & 0x3F);
    out[3] = 0x80 | (c & 0x3F);
    return 4;
}

/* One text's code points, read straight from the str's own storage (1, 2 or 4 bytes each; immutable, so
 * safe without the GIL) -> ids (start id first, end id last) in sc, and its OOV count; words are keyed by their UTF-8.
 * Returns 1 for a text with a lone surrogate, which UTF-8 cannot carry: the reference takes it. */
#define SCAN(NAME, T)                                                                          \
    static int NAME(const Tok *t, const T *s, Py_ssize_t n, Scratch *sc, int64_t *oov) {       \
        if (reserve(t, sc, (size_t)n)) return -1;                                              \
        sc->n = sc->wlen = sc->in_word = 0;                                                    \
        *oov = sc->words = 0;                                                                  \
        if (t->has_start) push_id(sc, t->start_id, 0, 0);                                      \
        unsigned char *word = sc->word;                                                        \
        Py_ssize_t word_start = 0;                                                             \
        for (Py_ssize_t i = 0; i < n; i++) {                                                   \
            Py_UCS4 c = s[i];                                                                  \
            if (c < 0x80) {                                                                    \
                unsigned char m = t->map[c];                                                   \
                if (m == t->sep) {                                                             \
                    end_word(t, sc, word_start, oov);                                          \
                    continue;                                                                  \
                }                                                                              \
                if (m == DELETE) continue;                                                     \
                if (!sc->in_word) word_start = i, sc->in_word = 1;                             \
                word[sc->wlen++] = m;                                                          \
                sc->word_end = i + 1;                                                          \
                continue;                                                                      \
            }                                                                                  \
            if (t->ascii_only || (c >= 0xD800 && c <= 0xDFFF)) return 1;                       \
            if (!sc->in_word) word_start = i, sc->in_word = 1;                                 \
            sc->word_end = i + 1;                                                              \
            if (t->repl) {                                                                     \
                memcpy(word + sc->wlen, t->repl, t->repl_len);                                 \
                sc->wlen += t->repl_len;                                                       \
            } else {                                                                           \
                sc->wlen += utf8_put(word + sc->wlen, c);                                      \
            }                                                                                  \
        }                                                                                      \
        end_word(t, sc, word_start, oov);                                                      \
        if (t->has_end) push_id(sc, t->end_id, 0, 0);                                          \
        return 0;                                                                              \
    }

SCAN(scan1, Py_UCS1)
SCAN(scan2, Py_UCS2)
SCAN(scan4, Py_UCS4)

typedef struct {
    int kind;
    const void *data;
    Py_ssize_t len;
} Text;

static int text_of(PyObject *text, Text *out) {
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text)) return -1;
#endif
    *out = (Text){PyUnicode_KIND(text), PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text)};
    return 0;
}

static int encode_text(const Tok *t, const Text *x, Scratch *sc, int64_t *oov) {
    switch (x->kind) {
    case PyUnicode_1BYTE_KIND: return scan1(t, x->data, x->len, sc, oov);
    case PyUnicode_2BYTE_KIND: return scan2(t, x->data, x->len, sc, oov);
    default: return scan4(t, x->data, x->len, sc, oov);
    }
}

static void scratch_free(Scratch *sc) {
    free(sc->ids);
    free(sc->spans);
    free(sc->word);
}

static int Tok_init(Tok *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"vocab", "table", "sep", "replacement", "start_id", "oov_char", "unknown_id",
                            "ascii_only", "end_id", NULL};
    PyObject *vocab, *repl, *start, *oov, *unknown, *end = Py_None;
    Py_buffer table;
    int sep, ascii_only = 0;
    if (self->keys) {
        PyErr_SetString(PyExc_RuntimeError, "Tokenizer is initialised already");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!y*iOOOO|pO", names, &PyDict_Type, &vocab, &table, &sep, &repl,
                                     &start, &oov, &unknown, &ascii_only, &end))
        return -1;
    self->ascii_only = ascii_only;
    int bad = table.len != 128 || sep < 0 || sep > 127;
    if (!bad) memcpy(self->map, table.buf, 128);
    PyBuffer_Release(&table);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "table must be 128 bytes and sep an ASCII byte");
        return -1;
    }
    self->sep = (unsigned char)sep;
    if (repl != Py_None) {
        const char *r = PyUnicode_AsUTF8AndSize(repl, &self->repl_len);
        if (!r) return -1;
        self->repl = PyMem_RawMalloc(self->repl_len + 1);
        if (!self->repl) return PyErr_NoMemory(), -1;
        memcpy(self->repl, r, self->repl_len);
    }
    self->has_start = start != Py_None;
    self->start_id = self->has_start ? PyLong_AsLongLong(start) : 0;
    self->has_end = end != Py_None;
    self->end_id = self->has_end ? PyLong_AsLongLong(end) : 0;
    self->oov_char = oov == Py_None ? NOT_FOUND : PyLong_AsLongLong(oov);
    self->unknown_id = unknown == Py_None ? NOT_FOUND : PyLong_AsLongLong(unknown);
    if (PyErr_Occurred()) return -1;

    Py_ssize_t words = PyDict_Size(vocab), hot = words < HOT_WORDS ? words : HOT_WORDS, pos = 0, len, n = 0;
    size_t total = 0;
    PyObject *key, *value;
    while (PyDict_Next(vocab, &pos, &key, &value)) {
        if (PyUnicode_Check(key) && PyUnicode_AsUTF8AndSize(key, &len)) total += len;
        PyErr_Clear();
    }
    if (total > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "vocabulary too large for the compiled tokenizer");
        return -1;
    }
    self->keys = PyMem_RawCalloc(total + 8, 1);
    if (!self->keys || table_new(&self->hot, hot) || table_new(&self->cold, words - hot))
        return PyErr_NoMemory(), -1;
    uint32_t off = 0;
    pos = 0;
    while (PyDict_Next(vocab, &pos, &key, &value)) {  /* insertion order: the spec's rank order */
        const char *k = PyUnicode_Check(key) ? PyUnicode_AsUTF8AndSize(key, &len) : NULL;
        n++;
        if (!k) {  /* a word with a lone surrogate: no text that reaches this path can contain it */
            PyErr_Clear();
            continue;
        }
        int64_t id = PyLong_AsLongLong(value);
        if (PyErr_Occurred()) return -1;
        if (id < INT32_MIN || id > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "token ids beyond int32 for the compiled tokenizer");
            return -1;
        }
        memcpy(self->keys + off, k, len);
        table_put(n <= hot ? &self->hot : &self->cold, (const unsigned char *)self->keys + off, len, off, (int32_t)id);
        off += (uint32_t)len;
    }
    return 0;
}

static void Tok_dealloc(Tok *self) {
    PyMem_RawFree(self->hot.slots);
    PyMem_RawFree(self->cold.slots);
    PyMem_RawFree(self->keys);
    PyMem_RawFree(self->repl);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *list_of(const int64_t *v, size_t n) {
    PyObject *out = PyList_New(n);
    for (size_t i = 0; out && i < n; i++) {
        PyObject *x = PyLong_FromLongLong(v[i]);
        if (!x) return Py_DECREF(out), NULL;
        PyList_SET_ITEM(out, i, x);
    }
    return out;
}

/* encode(text, spans=False) -> (ids, oov, spans or None), or None for a text with a lone surrogate: the
 * caller then uses the reference. */
static PyObject *Tok_encode(Tok *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"text", "spans", NULL};
    PyObject *text;
    int want_spans = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "U|p", names, &text, &want_spans)) return NULL;
    Text x;
    if (text_of(text, &x)) return NULL;
    Scratch sc = {.want_spans = want_spans};
    int64_t oov;
    int status = encode_text(self, &x, &sc, &oov);
    if (status) {
        scratch_free(&sc);
        if (status < 0) return PyErr_NoMemory();
        Py_RETURN_NONE;
    }
    PyObject *ids = list_of(sc.ids, sc.n), *spans = NULL;
    if (ids && want_spans) {
        spans = PyList_New(sc.n);
        for (size_t i = 0; spans && i < sc.n; i++) {
            PyObject *pair = Py_BuildValue("(LL)", (long long)sc.spans[2 * i], (long long)sc.spans[2 * i + 1]);
            if (!pair) Py_CLEAR(spans);
            else PyList_SET_ITEM(spans, i, pair);
        }
    }
    scratch_free(&sc);
    if (!ids || (want_spans && !spans)) {
        Py_XDECREF(ids);
        return NULL;
    }
    PyObject *out = Py_BuildValue("(NLO)", ids, (long long)oov, spans ? spans : Py_None);
    Py_XDECREF(spans);
    return out;
}

/* encode_batch(texts, out, counts, maxlen, pre_pad, pre_trunc) -> list of the indices left to the reference.
 * out: a zeroed C-contiguous int64 buffer [N, maxlen], filled as keras pad_sequences would;
 * counts: int64 [N, 3] gets each text's id count before truncation, its OOV count and its word count. */
static PyObject *Tok_encode_batch(Tok *self, PyObject *args) {
    PyObject *texts;
    Py_buffer out, counts;
    Py_ssize_t maxlen;
    int pre_pad, pre_trunc;
    if (!PyArg_ParseTuple(args, "O!w*w*npp", &PyList_Type, &texts, &out, &counts, &maxlen, &pre_pad, &pre_trunc))
        return NULL;
    Py_ssize_t rows = PyList_GET_SIZE(texts);
    PyObject *result = NULL, *held = PyList_GetSlice(texts, 0, rows);  /* our own references while unlocked */
    Text *xs = calloc(rows ? rows : 1, sizeof(Text));
    char *referred = calloc(rows ? rows : 1, 1);  /* rows left to the reference */
    if (!held || !xs || !referred) {
        if (held) PyErr_NoMemory();
        goto done;
    }
    if (maxlen < 1 || out.len != rows * maxlen * 8 || counts.len != rows * 24) {
        PyErr_SetString(PyExc_ValueError, "out must be int64 [N, maxlen] and counts int64 [N, 3]");
        goto done;
    }
    for (Py_ssize_t r = 0; r < rows; r++) {
        PyObject *text = PyList_GET_ITEM(held, r);
        if (!PyUnicode_Check(text)) {
            PyErr_Format(PyExc_TypeError, "text %zd is not a str", r);
            goto done;
        }
        if (text_of(text, &xs[r])) goto done;
    }
    int failed = 0;
    int64_t *dst = out.buf, *cnt = counts.buf;
    Py_BEGIN_ALLOW_THREADS
    Scratch sc = {0};
    for (Py_ssize_t r = 0; r < rows; r++) {
        int64_t oov;
        int status = encode_text(self, &xs[r], &sc, &oov);
        if (status > 0) {
            referred[r] = 1;
            continue;
        }
        if (status < 0) {
            failed = 1;
            break;
        }
        size_t keep = sc.n < (size_t)maxlen ? sc.n : (size_t)maxlen;
        const int64_t *from = pre_trunc ? sc.ids + (sc.n - keep) : sc.ids;
        int64_t *row = dst + r * maxlen + (pre_pad ? maxlen - keep : 0);
        memcpy(row, from, keep * sizeof(int64_t));
        cnt[3 * r] = (int64_t)sc.n;
        cnt[3 * r + 1] = oov;
        cnt[3 * r + 2] = sc.words;
    }
    scratch_free(&sc);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyList_New(0);
    for (Py_ssize_t r = 0; result && r < rows; r++) {
        if (!referred[r]) continue;
        PyObject *i = PyLong_FromSsize_t(r);
        if (!i || PyList_Append(result, i)) Py_CLEAR(result);
        Py_XDECREF(i);
    }
done:
    free(xs);
    free(referred);
    Py_XDECREF(held);
    PyBuffer_Release(&out);
    PyBuffer_Release(&counts);
    return result;
}

static PyMethodDef Tok_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))Tok_encode, METH_VARARGS | METH_KEYWORDS,
     "encode(text, spans=False) -> (ids, oov, spans) or None"},
    {"encode_batch", (PyCFunction)Tok_encode_batch, METH_VARARGS,
     "encode_batch(texts, out, counts, maxlen, pre_pad, pre_trunc) -> indices left to the reference"},
    {NULL},
};

static PyTypeObject TokType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rnnserve.service.core._fasttok.Tokenizer",
    .tp_basicsize = sizeof(Tok),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Tok_init,
    .tp_dealloc = (destructor)Tok_dealloc,
    .tp_methods = Tok_methods,
    .tp_doc = "Tokenizer(vocab, table, sep, replacement, start_id, oov_char, unknown_id, ascii_only=False, "
              "end_id=None)",
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_fasttok", .m_doc = "Compiled tokenizer.", .m_size = -1,
};

PyMODINIT_FUNC PyInit__fasttok(void) {
    if (PyType_Ready(&TokType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&TokType);
    if (PyModule_AddObject(m, "Tokenizer", (PyObject *)&TokType) < 0) {
        Py_DECREF(&TokType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
