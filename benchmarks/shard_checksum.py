"""What the shards' page checksums cost: writing and reading a store's shards with and
without them, in one process, arms interleaved (the machine is noisy).

The store writes CRC32 page checksums and verifies them on read since 2026-12-05 (a
flipped bit on disk used to read back as a different image). Shards are the fleet's
usual ones: ``--episodes-per-shard`` episodes of ``--steps`` steps at ``--size`` pixels
(random pixels: the worst case for zstd, so the checksummed bytes are all there).

  python benchmarks/shard_checksum.py --json OUT [--shards 40] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time

import numpy as np
import pyarrow.parquet as pq

from _results import write_result
from mtopt.store.schema import Episode, episodes_to_table


def episode(i: int, steps: int, size: int) -> Episode:
    rng = np.random.default_rng(i)
    return Episode(
        episode_id=f"ep{i}",
        robot_id="r0",
        task="lift-any",
        policy="scripted-pick",
        policy_version=0,
        seed=i,
        images=rng.integers(0, 256, (steps + 1, size, size, 3), dtype=np.uint8),
        states=rng.random((steps + 1, 2), dtype=np.float32),
        actions=rng.uniform(-1, 1, (steps, 6)).astype(np.float32),
        final_image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
    )


def shard_bytes(table: object, checksum: bool) -> bytes:
    buf = io.BytesIO()
    pq.write_table(
        table, buf, compression="zstd", compression_level=3, write_page_checksum=checksum
    )
    return buf.getvalue()


def read(data: bytes, verify: bool) -> None:
    with pq.ParquetFile(io.BytesIO(data), page_checksum_verification=verify) as shard:
        shard.read()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--shards", type=int, default=40)
    ap.add_argument("--episodes-per-shard", type=int, default=16)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    tables = [
        episodes_to_table(
            [
                episode(s * args.episodes_per_shard + k, args.steps, args.size)
                for k in range(args.episodes_per_shard)
            ]
        )
        for s in range(args.shards)
    ]
    times: dict[str, list[float]] = {a: [] for a in ("write", "write_crc", "read", "read_crc")}
    data = {c: [shard_bytes(t, c) for t in tables] for c in (False, True)}
    for _ in range(args.repeats):
        for crc in (False, True):  # interleaved: drift hits both arms alike
            t0 = time.perf_counter()
            for t in tables:
                shard_bytes(t, crc)
            times["write_crc" if crc else "write"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for d in data[crc]:
                read(d, crc)
            times["read_crc" if crc else "read"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    mib = sum(len(d) for d in data[True]) / 2**20
    out = {
        "machine": platform.processor() or platform.machine(),
        "args": vars(args),
        "store_mib": round(mib, 2),
        "bytes_added_by_checksums": sum(map(len, data[True])) - sum(map(len, data[False])),
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "write_mib_per_s": {
            "plain": round(mib / med["write"], 1),
            "checksums": round(mib / med["write_crc"], 1),
        },
        "read_mib_per_s": {
            "plain": round(mib / med["read"], 1),
            "checksums": round(mib / med["read_crc"], 1),
        },
        "write_ratio_crc_over_plain": round(med["write_crc"] / med["write"], 3),
        "read_ratio_crc_over_plain": round(med["read_crc"] / med["read"], 3),
    }
    write_result(args.json, out)


if __name__ == "__main__":
    main()
