"""`cutout batch` and `cutout erase-batch`: a folder or glob of images through one
RemoveBackgroundStream (erase-batch: items that carry the regions to erase).

Each input keeps its path relative to the folder (or to the glob's fixed part) under
the output folder, with the format's extension. An input whose output exists is
skipped, so an interrupted batch resumes where it stopped. Outputs are written to a
temporary file and renamed, so none is ever half-written.

Idempotency: each item's key is the output folder's batch id (kept in
`<output>/.cutout-batch-id`) plus the sha256 of the image and the options. If a run
dies after the server charged an item but before its output was written, the rerun
gets that item served again without a second charge.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import secrets
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.rpc import code_pb2
from tqdm import tqdm

from cutout.client import CutoutClient, credits_text
from cutout.v1 import cutout_pb2, erase_pb2, options_pb2

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
BATCH_ID_FILE = ".cutout-batch-id"
# With --keep: one line per kept result (its token is shown once, so it is written here, owner-only).
KEPT_FILE = "kept-results.tsv"
GLOB_CHARACTERS = set("*?[")


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path


@dataclass(frozen=True)
class EraseRule:
    """What erase-batch sends with each picture: a mask built for it (see cutout.watermark), fixed boxes, options."""

    make_mask: Callable[[bytes], bytes] | None
    boxes: list[erase_pb2.Box]
    options: erase_pb2.EraseOptions

    def regions(self, image: bytes) -> erase_pb2.EraseRegions:
        mask = self.make_mask(image) if self.make_mask is not None else b""
        return erase_pb2.EraseRegions(mask=mask, boxes=self.boxes, options=self.options)


@dataclass
class Outcome:
    done: int = 0
    skipped: int = 0
    credits_charged: str | None = None  # from the stream's summary (a decimal); None if the stream ended without one
    failures: dict[Path, str] = field(default_factory=dict)  # input -> reason
    interrupted: bool = False


def find_inputs(pattern: str, out_dir: Path) -> list[tuple[Path, Path]]:
    """(input, its path relative to the folder or the glob's fixed part), sorted; outputs excluded."""
    if GLOB_CHARACTERS & set(pattern):
        fixed = Path(*[part for part in _until_glob(Path(pattern).parts)])
        found = [Path(match) for match in glob.glob(pattern, recursive=True)]
        base = fixed
    elif Path(pattern).is_dir():
        base = Path(pattern)
        found = [path for path in base.rglob("*") if not _hidden(path.relative_to(base))]
    else:
        base = Path(pattern).parent
        found = [Path(pattern)]
    out_dir = out_dir.resolve()
    inputs = [
        (path, path.relative_to(base))
        for path in found
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.resolve().is_relative_to(out_dir)
    ]
    return sorted(inputs)


def _until_glob(parts: tuple[str, ...]) -> Iterator[str]:
    for part in parts:
        if GLOB_CHARACTERS & set(part):
            return
        yield part


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def plan(inputs: list[tuple[Path, Path]], out_dir: Path, extension: str) -> tuple[list[Job], list[Job]]:
    """(jobs to run, jobs whose output exists). Two inputs that would write one output are an error."""
    jobs: dict[Path, Job] = {}
    for source, relative in inputs:
        output = out_dir / relative.with_suffix(extension)
        if output in jobs:
            raise ValueError(f"{jobs[output].source} and {source} would both be written to {output}")
        jobs[output] = Job(source, output)
    pending: list[Job] = []
    existing: list[Job] = []
    for job in jobs.values():
        (existing if job.output.exists() else pending).append(job)
    return pending, existing


def batch_id(out_dir: Path) -> str:
    """The output folder's batch id, created on the first run and reused by every resume."""
    path = out_dir / BATCH_ID_FILE
    if not path.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(16) + "\n")
    return path.read_text().strip()


def idempotency_key(
    batch: str, image: bytes, options: options_pb2.RemoveBackgroundOptions | erase_pb2.EraseRegions
) -> str:
    digest = hashlib.sha256(image)
    digest.update(options.SerializeToString(deterministic=True))
    return f"batch-{batch}-{digest.hexdigest()}"


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".part", delete=False) as out:
        try:
            out.write(data)
        except BaseException:
            os.unlink(out.name)
            raise
    os.replace(out.name, path)


def record_kept(out_dir: Path, job: Job, kept: options_pb2.KeptResult) -> None:
    path = out_dir / KEPT_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as manifest:
        if manifest.tell() == 0:
            manifest.write("input\tresult_id\texpires_at\ttoken\n")
        expires = kept.expires_at.ToDatetime().isoformat(timespec="seconds") + "Z"
        manifest.write(f"{job.source}\t{kept.result_id}\t{expires}\t{kept.token}\n")


class _Sender:
    """The stream's request iterator: reads each file only when a slot in the window is free."""

    def __init__(
        self,
        jobs: list[Job],
        batch: str,
        options: options_pb2.RemoveBackgroundOptions,
        window: int,
        erase: EraseRule | None = None,
    ) -> None:
        self.jobs, self.batch, self.options, self.erase = jobs, batch, options, erase
        self.slots = threading.Semaphore(window)
        self.stopped = threading.Event()
        self.unsent: dict[str, str] = {}  # item id -> why it was never sent

    def __iter__(self) -> Iterator[cutout_pb2.StreamRequest]:
        yield cutout_pb2.StreamRequest(defaults=self.options)
        for index, job in enumerate(self.jobs):
            while not self.slots.acquire(timeout=0.2):
                if self.stopped.is_set():
                    return
            if self.stopped.is_set():
                return
            try:
                image = job.source.read_bytes()
            except OSError as error:
                self.unsent[str(index)] = f"could not be read: {error.strerror or error}"
                self.slots.release()
                continue
            if self.erase is None:
                key = idempotency_key(self.batch, image, self.options)
                item = cutout_pb2.StreamItem(id=str(index), image=image, idempotency_key=key)
            else:
                try:
                    regions = self.erase.regions(image)
                except (OSError, ValueError) as error:  # not a picture, or the rule marks nothing
                    self.unsent[str(index)] = f"no mask: {error}"
                    self.slots.release()
                    continue
                key = idempotency_key(self.batch, image, regions)
                item = cutout_pb2.StreamItem(id=str(index), image=image, regions=regions, idempotency_key=key)
            yield cutout_pb2.StreamRequest(item=item)

    def answered(self) -> None:
        self.slots.release()


def alpha_path(output: Path) -> Path:
    """Where the pair's alpha PNG goes: beside the colour JPEG."""
    return output.with_name(f"{output.stem}-alpha.png")


def result_files(output: Path, result: options_pb2.CutoutImage) -> list[tuple[Path, bytes]]:
    """What to write for a result: the image; for a pair, the alpha PNG too, or one zip of both."""
    if not result.alpha_image:
        return [(output, result.image)]
    if output.suffix.lower() == ".zip":
        packed = io.BytesIO()
        with zipfile.ZipFile(packed, "w", zipfile.ZIP_STORED) as archive:  # both are compressed already
            archive.writestr(f"{output.stem}.jpg", result.image)
            archive.writestr(f"{output.stem}-alpha.png", result.alpha_image)
        return [(output, packed.getvalue())]
    # The alpha first: the colour file's presence then means the pair is complete (batch resumes on it).
    return [(alpha_path(output), result.alpha_image), (output, result.image)]


def run_batch(
    client: CutoutClient,
    pending: list[Job],
    out_dir: Path,
    options: options_pb2.RemoveBackgroundOptions,
    *,
    concurrency: int,
    progress: bool = True,
    erase: EraseRule | None = None,
) -> Outcome:
    outcome = Outcome()
    if not pending:
        outcome.credits_charged = "0"
        return outcome
    sender = _Sender(pending, batch_id(out_dir), options, concurrency, erase)
    answered: set[str] = set()
    bar = tqdm(total=len(pending), unit="image", disable=not progress, dynamic_ncols=True)
    call = client.remove_background_stream(iter(sender))
    try:
        for answer in call:
            if answer.HasField("summary"):
                summary = answer.summary
                outcome.credits_charged = credits_text(summary.credits_charged_decimal, summary.credits_charged)
                continue
            item = answer.item
            answered.add(item.id)
            job = pending[int(item.id)]
            if item.HasField("response"):
                for path, data in result_files(job.output, item.response.result):
                    write_atomically(path, data)
                if item.response.HasField("kept"):
                    record_kept(out_dir, job, item.response.kept)
                outcome.done += 1
            elif item.HasField("erased"):
                write_atomically(job.output, item.erased.result.image)
                outcome.done += 1
            else:
                outcome.failures[job.source] = f"{code_pb2.Code.Name(item.error.code)}: {item.error.message}"
            sender.answered()
            bar.update(1)
    except KeyboardInterrupt:
        outcome.interrupted = True
        call.cancel()
    except grpc.RpcError as error:
        # The stream itself ended (bad key, lost connection): the unanswered items are reported.
        reason = f"{error.code().name}: {error.details()}"  # type: ignore[attr-defined]
        for index, job in enumerate(pending):
            if str(index) not in answered and str(index) not in sender.unsent:
                outcome.failures[job.source] = f"not processed ({reason})"
    finally:
        sender.stopped.set()
        bar.close()
    for index, reason in sender.unsent.items():
        outcome.failures[pending[int(index)].source] = reason
    return outcome


def report(outcome: Outcome, total: int, elapsed_s: float) -> str:
    lines = [
        f"{outcome.done} done, {len(outcome.failures)} failed, {outcome.skipped} skipped (output exists); "
        + (
            f"{outcome.credits_charged} credits charged"
            if outcome.credits_charged is not None
            else "credits charged: see `cutout balance --ledger`"
        )
        + f"; {elapsed_s:.1f} s"
        + (f" ({outcome.done / elapsed_s:.1f} images/s)" if outcome.done and elapsed_s else "")
    ]
    if outcome.interrupted:
        lines.append(f"interrupted: {total - outcome.done - len(outcome.failures)} not processed; run again to resume")
    lines += [f"  {source}: {reason}" for source, reason in sorted(outcome.failures.items())]
    return "\n".join(lines)
