#!/usr/bin/env python3
"""Checks that .wasm modules fit Runnel plugin ABI v1 (sdk/ABI.md), without wabt/wasm-objdump.

For each module: the function exports must be exactly the ABI ones (runnel_init optional), the
memory must be exported as `memory`, and imports may come only from module `runnel` with the
names the ABI defines (with --wasi, `wasi_snapshot_preview1` imports are allowed too). Also
prints the size and the largest sections. Exit status 1 if any module fails.
"""
import sys

ABI_EXPORTS = {"runnel_abi_version", "runnel_alloc", "runnel_process"}
OPTIONAL_EXPORTS = {"runnel_init", "runnel_abi_features"}
# Linker-provided globals rustc (before 1.7x) always exports from a wasm32 cdylib; the host only
# looks exports up by name, so they are harmless and reported, not rejected.
TOLERATED_GLOBALS = {"__data_end", "__heap_base"}
RUNNEL_IMPORTS = {"log", "set_error", "state_get", "state_put", "state_delete", "env_get", "json_find", "json_equals"}
KINDS = {0: "func", 1: "table", 2: "memory", 3: "global"}
SECTION_NAMES = {0: "custom", 1: "type", 2: "import", 3: "function", 4: "table", 5: "memory", 6: "global",
                 7: "export", 8: "start", 9: "element", 10: "code", 11: "data", 12: "datacount"}


class Reader:
    def __init__(self, data, pos=0, end=None):
        self.data, self.pos, self.end = data, pos, len(data) if end is None else end

    def byte(self):
        if self.pos >= self.end:
            raise ValueError("truncated module")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uleb(self):
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    def name(self):
        n = self.uleb()
        if self.pos + n > self.end:
            raise ValueError("truncated name")
        s = self.data[self.pos:self.pos + n].decode("utf-8")
        self.pos += n
        return s

    def limits(self):
        flags = self.byte()
        self.uleb()
        if flags & 1:
            self.uleb()


def sections(data):
    if data[:4] != b"\0asm" or data[4:8] != b"\1\0\0\0":
        raise ValueError("not a wasm 1.0 module")
    r = Reader(data, 8)
    while r.pos < len(data):
        sid = r.byte()
        size = r.uleb()
        start = r.pos
        name = SECTION_NAMES.get(sid, str(sid))
        if sid == 0:
            name = "custom:" + Reader(data, start, start + size).name()
        yield sid, name, start, size
        r.pos = start + size


def inspect(data):
    imports, exports, sizes = [], [], []
    for sid, name, start, size in sections(data):
        sizes.append((size, name))
        r = Reader(data, start, start + size)
        if sid == 2:
            for _ in range(r.uleb()):
                module, field, kind = r.name(), r.name(), r.byte()
                if kind == 0:
                    r.uleb()
                elif kind == 1:
                    r.byte()
                    r.limits()
                elif kind == 2:
                    r.limits()
                elif kind == 3:
                    r.byte()
                    r.byte()
                imports.append((module, field, KINDS.get(kind, kind)))
        elif sid == 7:
            for _ in range(r.uleb()):
                field, kind = r.name(), r.byte()
                r.uleb()
                exports.append((field, KINDS.get(kind, kind)))
    return imports, exports, sorted(sizes, reverse=True)


def uleb_bytes(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def strip_extra_exports(data):
    """The module with the tolerated linker globals removed from its export section, so it
    exports exactly the ABI symbols. Only the export section changes (indices stay valid)."""
    out = bytearray(data[:8])
    for sid, _name, start, size in sections(data):
        body = data[start:start + size]
        if sid == 7:
            r = Reader(data, start, start + size)
            kept = []
            for _ in range(r.uleb()):
                entry_start = r.pos
                field, kind = r.name(), r.byte()
                r.uleb()
                if not (kind == 3 and field in TOLERATED_GLOBALS):
                    kept.append(data[entry_start:r.pos])
            body = uleb_bytes(len(kept)) + b"".join(kept)
        out += bytes([sid]) + uleb_bytes(len(body)) + body
    return bytes(out)


def check(path, wasi):
    data = open(path, "rb").read()
    imports, exports, sizes = inspect(data)
    problems = []
    funcs = {n for n, k in exports if k == "func"}
    missing = ABI_EXPORTS - funcs
    extra = funcs - ABI_EXPORTS - OPTIONAL_EXPORTS
    if missing:
        problems.append("missing exports: " + ", ".join(sorted(missing)))
    if extra:
        problems.append("unexpected function exports: " + ", ".join(sorted(extra)))
    if ("memory", "memory") not in exports:
        problems.append("no memory exported as `memory`")
    other = [n for n, k in exports if k not in ("func", "memory") and not (k == "global" and n in TOLERATED_GLOBALS)]
    if other:
        problems.append("unexpected exports: " + ", ".join(other))
    for module, field, kind in imports:
        if module == "runnel" and field in RUNNEL_IMPORTS and kind == "func":
            continue
        if wasi and module == "wasi_snapshot_preview1":
            continue
        problems.append(f"forbidden import {module}.{field} ({kind})")
    status = "ok" if not problems else "FAIL"
    print(f"{status:4} {path}: {len(data)} bytes")
    print("     exports: " + ", ".join(f"{n} ({k})" for n, k in exports))
    print("     imports: " + (", ".join(f"{m}.{f}" for m, f, _ in imports) or "none"))
    print("     largest sections: " + ", ".join(f"{n} {s}" for s, n in sizes[:4]))
    for p in problems:
        print("     problem: " + p)
    return not problems


def main(argv):
    if argv[:1] == ["--strip"]:
        # check_wasm.py --strip IN OUT: copy IN to OUT without the tolerated linker globals.
        if len(argv) != 3:
            print("usage: check_wasm.py --strip IN.wasm OUT.wasm", file=sys.stderr)
            return 2
        with open(argv[1], "rb") as src:
            stripped = strip_extra_exports(src.read())
        with open(argv[2], "wb") as dst:
            dst.write(stripped)
        return 0
    wasi = "--wasi" in argv
    paths = [a for a in argv if a != "--wasi"]
    if not paths:
        print("usage: check_wasm.py [--wasi] FILE.wasm...  |  check_wasm.py --strip IN OUT", file=sys.stderr)
        return 2
    ok = True
    for path in paths:
        try:
            ok &= check(path, wasi)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            print(f"FAIL {path}: {e}")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
