#!/usr/bin/env python3
"""Writes the seed corpus, tests/fuzz/corpus/<target>/, from scratch.

Each seed is a small, meaningful input in the layout its target reads
(documented in the target's source): valid virtio requests, a driver's
register sequence, a real config file, HTTP requests, tiny kernels.
Run it again after changing a target's input layout.
"""

import gzip
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
DATA = 0x1_0000  # flint_fuzz::DATA
NEXT, WRITE, INDIRECT = 1, 2, 4
F_VERSION_1 = 1 << 32
F_EVENT_IDX = 1 << 29
F_MRG_RXBUF = 1 << 15
F_CSUM = 1 << 0


def u8(v): return struct.pack("<B", v)
def u16(v): return struct.pack("<H", v)
def u32(v): return struct.pack("<I", v)
def u64(v): return struct.pack("<Q", v)


def queue(size_log2, descs, rounds, used_event=0, garbage=None):
    """flint_fuzz::QueueInput: descs are (addr, len, flags, next)."""
    out = u8(size_log2)
    if garbage:
        out += u8(1) + b"".join(u64(a) for a in garbage)
    else:
        out += u8(0)
    out += u16(0) + u16(used_event) + u8(len(descs))
    for addr, length, flags, nxt in descs:
        out += u8(0) + u64(addr) + u32(length) + u16(flags) + u16(nxt)
    out += u8(len(rounds))
    for heads in rounds:
        out += u8(len(heads)) + b"".join(u16(h) for h in heads) + u8(0)
    return out


def data_region(items):
    """Bytes for DATA.. from (offset, bytes) pairs."""
    end = max(off + len(b) for off, b in items)
    buf = bytearray(end)
    for off, b in items:
        buf[off:off + len(b)] = b
    return bytes(buf)


def blk_hdr(kind, sector):
    return u32(kind) + u32(0) + u64(sector)


BLOCK_DESCS = [
    # 0-2: read sector 1 into 512 bytes
    (DATA + 0x000, 16, NEXT, 1), (DATA + 0x800, 512, WRITE | NEXT, 2), (DATA + 0x700, 1, WRITE, 0),
    # 3-5: write 512 bytes at sector 2
    (DATA + 0x100, 16, NEXT, 4), (DATA + 0x400, 512, NEXT, 5), (DATA + 0x701, 1, WRITE, 0),
    # 6-7: flush
    (DATA + 0x200, 16, NEXT, 7), (DATA + 0x702, 1, WRITE, 0),
    # 8-10: get id
    (DATA + 0x300, 16, NEXT, 9), (DATA + 0xa00, 20, WRITE | NEXT, 10), (DATA + 0x703, 1, WRITE, 0),
]
BLOCK_DATA = data_region([
    (0x000, blk_hdr(0, 1)), (0x100, blk_hdr(1, 2)), (0x200, blk_hdr(4, 0)),
    (0x300, blk_hdr(8, 0)), (0x400, bytes(range(256)) * 2),
])


def block_seeds():
    q = queue(4, BLOCK_DESCS, [[0, 3], [6, 8]])
    yield "requests", u64(F_VERSION_1) + u8(0) + q + BLOCK_DATA
    q = queue(4, BLOCK_DESCS, [[0], [3], [6], [8]], used_event=1)
    yield "event-idx", u64(F_VERSION_1 | F_EVENT_IDX) + u8(2) + q + BLOCK_DATA
    yield "read-only-write", u64(F_VERSION_1) + u8(1) + queue(4, BLOCK_DESCS, [[3]]) + BLOCK_DATA
    # An indirect table at DATA + 0xc00 holding the read request's chain.
    table = b"".join(u64(a) + u32(l) + u16(f) + u16(n) for a, l, f, n in BLOCK_DESCS[:3])
    indirect = [(DATA + 0xc00, len(table), INDIRECT, 0)]
    data = data_region([(0, BLOCK_DATA), (0xc00, table)])
    yield "indirect", u64(F_VERSION_1) + u8(0) + queue(2, indirect, [[0]]) + data


def frame(n):
    eth = bytes([0x06, 0, 0, 0, 0, 2, 0x06, 0, 0, 0, 0, 1, 0x08, 0x00])
    return eth + bytes(i % 251 for i in range(n - len(eth)))


def net_tx_seeds():
    hdr = bytes(12)
    descs = [
        (DATA, 12 + 60, 0, 0),                            # 0: header + frame
        (DATA + 0x100, 12, NEXT, 2), (DATA + 0x200, 60, 0, 0),  # 1-2: split
    ]
    data = data_region([(0, hdr + frame(60)), (0x100, hdr), (0x200, frame(60))])
    yield "frames", u64(F_VERSION_1) + u8(0) + queue(4, descs, [[0], [1]]) + data
    csum = bytes([1, 0]) + u16(0) + u16(0) + u16(14) + u16(6) + u16(0)
    data = data_region([(0, csum + frame(60))])
    yield "csum", u64(F_VERSION_1 | F_CSUM) + u8(0) + queue(4, descs[:1], [[0]]) + data
    yield "backend-fails", u64(F_VERSION_1) + u8(1) + queue(4, descs, [[0, 1]]) + data


def net_rx_seeds():
    bufs = [(DATA + i * 0x800, 0x800, WRITE, 0) for i in range(4)]
    frames = [frame(60), frame(1514)]
    enc = u8(len(frames)) + b"".join(u16(12 + len(f)) + bytes(12) + f for f in frames)
    q = queue(4, bufs, [[0, 1], [2, 3]])
    yield "mergeable", u64(F_VERSION_1 | F_MRG_RXBUF) + u16(0) + q + enc
    chained = [(DATA, 12, WRITE | NEXT, 1), (DATA + 0x100, 0x700, WRITE, 0)]
    q = queue(4, chained, [[0]])
    yield "chained", u64(F_VERSION_1) + u16(1500) + q + enc
    yield "no-buffers", u64(F_VERSION_1) + u16(0) + queue(4, [], []) + enc


# Indices into the virtio_mmio target's REGISTERS.
REG = {n: i for i, n in enumerate([
    "MAGIC", "DEVICE_FEATURES", "DEVICE_FEATURES_SEL", "DRIVER_FEATURES",
    "DRIVER_FEATURES_SEL", "QUEUE_SEL", "QUEUE_NUM_MAX", "QUEUE_NUM",
    "QUEUE_READY", "QUEUE_NOTIFY", "INTERRUPT_STATUS", "INTERRUPT_ACK",
    "STATUS", "QUEUE_DESC_LOW", "QUEUE_DESC_HIGH", "QUEUE_DRIVER_LOW",
    "QUEUE_DRIVER_HIGH", "QUEUE_DEVICE_LOW", "QUEUE_DEVICE_HIGH", "SHM_SEL",
    "SHM_LEN_LOW", "CONFIG_GENERATION", "CONFIG", "CONFIG8"])}


def mmio_seeds():
    def w(reg, v): return u8(0) + u8(REG[reg]) + u32(v)
    def r(reg): return u8(1) + u8(REG[reg])
    def mem(addr, b):
        return u32(addr) + u8(len(b)) + b
    # One read request: descriptors at 0, avail ring at 0x1000, used at 0x2000.
    table = b"".join(u64(a) + u32(l) + u16(f) + u16(n) for a, l, f, n in BLOCK_DESCS[:3])
    writes = [mem(0, table), mem(0x1000, u16(0) + u16(1) + u16(0)),
              mem(DATA, blk_hdr(0, 1))]
    init = (r("MAGIC") + w("STATUS", 1) + w("STATUS", 3)
            + w("DEVICE_FEATURES_SEL", 1) + r("DEVICE_FEATURES")
            + w("DRIVER_FEATURES_SEL", 1) + w("DRIVER_FEATURES", 1)
            + w("DRIVER_FEATURES_SEL", 0) + w("DRIVER_FEATURES", 0)
            + w("STATUS", 0xb) + r("STATUS") + w("QUEUE_SEL", 0) + r("QUEUE_NUM_MAX")
            + w("QUEUE_NUM", 16) + w("QUEUE_DESC_LOW", 0) + w("QUEUE_DESC_HIGH", 0)
            + w("QUEUE_DRIVER_LOW", 0x1000) + w("QUEUE_DRIVER_HIGH", 0)
            + w("QUEUE_DEVICE_LOW", 0x2000) + w("QUEUE_DEVICE_HIGH", 0)
            + w("QUEUE_READY", 1) + w("STATUS", 0xf))
    head = u16(len(writes)) + b"".join(writes)
    run = w("QUEUE_NOTIFY", 0) + u8(4) + r("INTERRUPT_STATUS") + w("INTERRUPT_ACK", 1)
    yield "init-and-read", head + init + run + r("CONFIG") + r("CONFIG8")
    yield "reset-after-use", head + init + run + w("STATUS", 0) + init + run
    garbage = init.replace(w("QUEUE_DESC_LOW", 0), w("QUEUE_DESC_LOW", 0xfffff000))
    yield "garbage-queue", head + garbage + run
    odd = u8(2) + u16(0x70) + u8(0) + u64(0xf) + u8(3) + u16(0x101) + u8(1)
    yield "odd-widths", head + init + odd + run


def serial_seeds():
    def w(off, v): return u8(0) + u8(off) + u8(v)
    def r(off): return u8(1) + u8(off)
    def inp(b): return u8(2) + u8(len(b)) + b
    setup = (w(3, 0x80) + w(0, 1) + w(1, 0) + w(3, 0x03) + w(2, 0xc7)
             + w(4, 0x0b) + w(1, 0x0f))
    out = b"".join(w(0, c) for c in b"hello\n")
    yield "linux-setup", setup + out + r(5) + r(2) + inp(b"ls\n") + r(5) + r(0) * 3 + r(2)
    yield "loopback", setup + w(4, 0x10) + out + r(0) * 6 + r(6)
    yield "input-flood", setup + inp(bytes(range(200))) * 3 + r(0) * 20


def i8042_seeds():
    def data(v): return u8(0) + u8(v)
    def cmd(v): return u8(1) + u8(v)
    rd, st = u8(2), u8(3)
    yield "ctr", cmd(0x20) + st + rd + cmd(0x60) + data(0x47) + cmd(0x20) + rd
    yield "keyboard-reset", data(0xff) + st + rd + rd + data(0xf4) + rd
    yield "ctrl-alt-del", cmd(0x60) + data(0x47) + u8(4) + (st + rd) * 8
    yield "reset-pulse", cmd(0xd1) + data(0xfe) + cmd(0xfe) + st


def config_seeds():
    with open(os.path.join(HERE, "../../resources/vm-config.example.json"), "rb") as f:
        yield "example", f.read()
    yield "minimal", json.dumps({"boot-source": {"kernel_image_path": "/k"}}).encode()
    full = {
        "boot-source": {"kernel_image_path": "/k", "initrd_path": "/i", "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 128, "smt": True},
        "drives": [{"drive_id": "root", "path_on_host": "/r", "is_root_device": True,
                    "is_read_only": True, "cache_type": "Unsafe", "io_engine": "Async"}],
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                                "guest_mac": "06:00:00:00:00:01"}],
        "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
        "entropy": {"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}},
        "balloon": {"amount_mib": 16, "deflate_on_oom": True, "stats_polling_interval_s": 1},
        "logger": {"log_path": "/dev/null", "level": "Info"},
    }
    yield "everything", json.dumps(full, indent=1).encode()
    yield "nulls", b'{"boot-source": {"kernel_image_path": "/k", "initrd_path": null}, "drives": null}'


def cli_seeds():
    specs = [
        (0, "path=/r.ext4,id=root,ro=on,root=on,cache=writeback"),
        (0, "path=/x,engine=async"),
        (1, "tap=tap0,mac=06:00:00:00:00:02,mtu=1400"),
        (1, "tap=tap1,id=eth1"),
        (2, "cid=7,uds=/run/v.sock"),
        (3, "bytes_per_s=4096"),
        (4, "mib=64,deflate_on_oom=on,stats=1"),
        (5, "06:00:ac:10:00:02"),
        (6, "console=ttyS0 reboot=k panic=1"),
    ]
    names = ["drive", "drive-engine", "net", "net-id", "vsock", "entropy", "balloon", "mac",
             "cmdline"]
    for name, (sel, s) in zip(names, specs):
        yield name, u8(sel) + s.encode()


def elf(paddr, body):
    """An x86-64 ELF executable with one PT_LOAD segment at `paddr`."""
    eh = bytearray(64)
    eh[:16] = b"\x7fELF\x02\x01\x01" + bytes(9)
    struct.pack_into("<HHIQQQIHHHHHH", eh, 16, 2, 62, 1, paddr, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 7, 0x1000, paddr, paddr, len(body), len(body), 0x1000)
    f = bytes(eh) + ph
    return f + bytes(0x1000 - len(f)) + body


def lz4_legacy(data):
    """LZ4 legacy frame of one block that holds only literals."""
    n = len(data)
    block = bytearray([0xf0 if n >= 15 else n << 4])
    if n >= 15:
        rest = n - 15
        while rest >= 255:
            block.append(255)
            rest -= 255
        block.append(rest)
    block += data
    return u32(0x184c2102) + u32(len(block)) + bytes(block) + u32(n)


def bzimage(payload):
    img = bytearray(1024)
    img[0x1f1] = 1
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, 0x020f)
    img[0x211] = 1
    struct.pack_into("<II", img, 0x248, 0, len(payload))
    return bytes(img) + payload


def kernel_seeds():
    body = b"\xf4" * 16 + b"virtio_mmio.device=" + bytes(32)
    vmlinux = elf(0x100000, body)
    yield "elf", vmlinux
    yield "bzimage-lz4", bzimage(lz4_legacy(vmlinux))
    yield "bzimage-gzip", bzimage(gzip.compress(vmlinux, mtime=0))
    yield "bzimage-unknown", bzimage(b"\xfd7zXZ\x00" + bytes(32))
    yield "elf32", b"\x7fELF\x01\x01\x01" + bytes(57)


def emulate_seeds():
    def regs(**kv):
        names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9",
                 "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags"]
        return b"".join(u64(kv.get(n, 0)) for n in names)

    def seed(insn, mem=b"", fs=0, gs=0x100, **kv):
        return regs(rflags=2, **kv) + u64(fs) + u64(gs) + insn.ljust(16, b"\x90") + mem

    mem = bytes(8) + u64(0xf0f0_0000_ffff_0001) + bytes(0x100)
    yield "popcnt-reg", seed(bytes.fromhex("f3480fb8c3"), rbx=0xff00ff)
    yield "popcnt-mem", seed(bytes.fromhex("f3480fb80b"), mem, rbx=8)
    yield "lzcnt-gs", seed(bytes.fromhex("65f30fbd0c2508000000"), mem, gs=0)
    yield "tzcnt16", seed(bytes.fromhex("66f30fbcc8"), rax=0x80)
    yield "int3", seed(b"\xcc")
    yield "clac-stac", seed(bytes.fromhex("0f01ca"))
    yield "invalid", seed(b"\x0f\xff\xff")


def http_seeds():
    def put(path, body):
        b = json.dumps(body).encode()
        return (f"PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(b)}\r\n\r\n").encode() + b
    yield "get-root", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
    yield "get-stats", b"GET /balloon/statistics?x=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    yield "machine", put("/machine-config", {"vcpu_count": 2, "mem_size_mib": 256})
    yield "boot", put("/boot-source", {"kernel_image_path": "/k", "boot_args": "console=ttyS0"})
    yield "drive", put("/drives/root", {"drive_id": "root", "path_on_host": "/r",
                                        "is_root_device": True, "is_read_only": False})
    yield "net", put("/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0"})
    yield "start", put("/actions", {"action_type": "InstanceStart"})
    b = b'{"state": "Paused"}'
    yield "pause", (b"PATCH /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(b)) + b
    yield "partial", b"PUT /actions HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"action"


TARGETS = {
    "virtio_block": block_seeds,
    "virtio_net_tx": net_tx_seeds,
    "virtio_net_rx": net_rx_seeds,
    "virtio_mmio": mmio_seeds,
    "serial": serial_seeds,
    "i8042": i8042_seeds,
    "config_json": config_seeds,
    "cli_specs": cli_seeds,
    "kernel_loaders": kernel_seeds,
    "emulate": emulate_seeds,
    "http_api": http_seeds,
}

if __name__ == "__main__":
    for target, seeds in TARGETS.items():
        d = os.path.join(CORPUS, target)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for name, data in seeds():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
