// passthrough.c: a Runnel ABI v1 transform in C. Forwards every record's key and value to
// output 0 with the input's timestamp (headers dropped). Build:
//   clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry -o passthrough.wasm passthrough.c
#include <stdint.h>

#define EXPORT(name) __attribute__((export_name(name)))
#define IMPORT(name) __attribute__((import_module("runnel"), import_name(name)))

IMPORT("set_error") void set_error(const char *ptr, int32_t len);

// -nostdlib: clang may still emit calls to memcpy for copy loops.
void *memcpy(void *dst, const void *src, unsigned long n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--) *d++ = *s++;
    return dst;
}

// Bump allocator. The host calls runnel_alloc once per batch, after it has copied the previous
// output, so that is where everything from the previous batch is released.
extern unsigned char __heap_base;
static uintptr_t heap_top;

static unsigned char *bump(uint32_t len) {
    uintptr_t start = (heap_top + 7) & ~(uintptr_t)7;
    uintptr_t end = start + len;
    uintptr_t have = __builtin_wasm_memory_size(0) * 65536;
    if (end < start) return 0;
    if (end > have && __builtin_wasm_memory_grow(0, (end - have + 65535) / 65536) == (__SIZE_TYPE__)-1) return 0;
    heap_top = end;
    return (unsigned char *)start;
}

EXPORT("runnel_abi_version") int32_t abi_version(void) { return 1; }

EXPORT("runnel_alloc") int32_t alloc(int32_t len) {
    heap_top = (uintptr_t)&__heap_base;
    return len < 0 ? 0 : (int32_t)(uintptr_t)bump((uint32_t)len);
}

// Bounds-checked reading: every read fails (returns 0) instead of running past the batch.
typedef struct { const unsigned char *p, *end; } cursor;

static int take(cursor *c, uint32_t n, const unsigned char **out) {
    if ((uint32_t)(c->end - c->p) < n) return 0;
    *out = c->p;
    c->p += n;
    return 1;
}

static int read_u32(cursor *c, uint32_t *v) {
    const unsigned char *b;
    if (!take(c, 4, &b)) return 0;
    *v = b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
    return 1;
}

static void put_u32(unsigned char **w, uint32_t v) {
    for (int i = 0; i < 4; i++) *(*w)++ = (unsigned char)(v >> (8 * i));
}

// Copies one byte string (i32 length, -1 = null, then the bytes) from input to output.
static int copy_bytes(cursor *c, unsigned char **w) {
    uint32_t len;
    const unsigned char *bytes;
    if (!read_u32(c, &len)) return 0;
    put_u32(w, len);
    if (len == 0xffffffff) return 1;
    if (len > 0x7fffffff || !take(c, len, &bytes)) return 0;
    memcpy(*w, bytes, len);
    *w += len;
    return 1;
}

static int64_t malformed(void) {
    static const char msg[] = "malformed input batch";
    set_error(msg, sizeof msg - 1);
    return -2;
}

EXPORT("runnel_process") int64_t process(int32_t ptr, int32_t len) {
    cursor c = {(const unsigned char *)ptr, (const unsigned char *)ptr + len};
    const unsigned char *skip;
    uint32_t version, count, headers;
    // Each output record is 4 bytes shorter than its input, so `len` bytes always suffice.
    unsigned char *out = bump((uint32_t)len), *w = out;
    if (!out) return -3;
    if (!read_u32(&c, &version) || version != 1 || !take(&c, 4, &skip) || !read_u32(&c, &count))
        return malformed();
    put_u32(&w, count);
    for (uint32_t i = 0; i < count; i++) {
        if (!take(&c, 16, &skip)) return malformed();  // offset, timestamp
        put_u32(&w, 0);                                // output index 0
        put_u32(&w, 0xffffffff);                       // timestamp -1: the input's
        put_u32(&w, 0xffffffff);
        if (!copy_bytes(&c, &w) || !copy_bytes(&c, &w)) return malformed();  // key, value
        if (!read_u32(&c, &headers)) return malformed();
        for (uint32_t h = 0; h < 2 * headers; h++) {  // skip header names and values
            uint32_t n;
            if (!read_u32(&c, &n) || (n != 0xffffffff && (n > 0x7fffffff || !take(&c, n, &skip))))
                return malformed();
        }
        put_u32(&w, 0);  // no headers
    }
    if (c.p != c.end) return malformed();
    return (int64_t)(uintptr_t)out << 32 | (uint32_t)(w - out);
}
