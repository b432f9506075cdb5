"""Where a sweep's Ray Tune state, checkpoints, trial folders and decoded-data cache live (the spec's ``storage:``).

Three places, one interface. By default the driver's ``results/<name>`` holds everything, as on one machine. A
path every node mounts (NFS) holds everything too, so any node reads what another wrote. An object store
(``s3://bucket/prefix``, any S3-compatible endpoint) holds Ray Tune's experiment state and every checkpoint, which
is what a trial resumed on another node needs; the trials' work folders and the decoded-data cache then stay on
each node's own disk (the cache is built once per node, by the first trial there). Credentials are each machine's
own (the AWS environment variables or an instance role): the filesystem Ray ships to the workers carries the
endpoint, never a key.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sweep.errors import SweepError
from sweep.spec import StorageSpec

S3 = "s3://"


@dataclass(frozen=True)
class Storage:
    """One sweep's storage: ``path`` is its folder in ``filesystem`` (a local path, or ``bucket/prefix/name``)."""

    path: str
    url: str
    """For messages: the folder as the user would write it (``s3://bucket/prefix/name`` or a path)."""
    endpoint: str | None = None

    @property
    def remote(self) -> bool:
        return self.url.startswith(S3)

    @property
    def tune_path(self) -> str:
        """Ray Tune's experiment folder (``Tuner.restore`` reads it back)."""
        return f"{self.path}/tune"

    @property
    def trials_dir(self) -> Path | None:
        """The trials' work folders; None: each node's own scratch folder (see :func:`scratch`)."""
        return None if self.remote else Path(self.path) / "trials"

    @property
    def cache_dir(self) -> Path | None:
        """The decoded-data cache; None: each node's own (see :func:`scratch`)."""
        return None if self.remote else Path(self.path) / "cache"

    def filesystem(self, timeout_s: float | None = None) -> Any:
        """The pyarrow filesystem Ray Tune writes through (None for a local path: Ray's own default). With
        ``timeout_s``, one that gives up that soon (for :func:`check`)."""
        if not self.remote:
            return None
        from pyarrow import fs

        options: dict[str, Any] = {}
        if self.endpoint:
            parsed = urlparse(self.endpoint)
            options = {"endpoint_override": parsed.netloc, "scheme": parsed.scheme}
        if timeout_s is not None:
            options |= {
                "connect_timeout": timeout_s,
                "request_timeout": timeout_s,
                "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=1),
            }
        return fs.S3FileSystem(**options)

    def exists(self, relative: str) -> bool:
        if not self.remote:
            return (Path(self.path) / relative).exists()
        from pyarrow import fs

        return bool(self.filesystem(10).get_file_info(f"{self.path}/{relative}").type != fs.FileType.NotFound)


def resolve(spec: StorageSpec, results_root: Path, name: str) -> Storage:
    """The storage of sweep ``name``: its folder under the spec's ``storage.uri``, or ``results_root`` itself."""
    if not spec.uri:
        return Storage(str(results_root), str(results_root))
    if spec.uri.startswith(S3):
        where = spec.uri.removeprefix(S3).strip("/")
        endpoint = spec.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return Storage(f"{where}/{name}", f"{S3}{where}/{name}", endpoint)
    root = Path(spec.uri.removeprefix("file://")).expanduser().resolve() / name
    return Storage(str(root), str(root))


def check(storage: Storage) -> None:
    """Before anything starts: the storage takes a write and gives it back, or one line says why not."""
    where = f"storage {storage.url}"
    if not storage.remote:
        try:
            Path(storage.path).mkdir(parents=True, exist_ok=True)
            local = Path(storage.path) / f".probe-{uuid.uuid4().hex}"
            local.write_bytes(b"ok")
            local.unlink()
        except OSError as e:
            raise SweepError(
                f"{where}: cannot write there ({e.strerror}); mount it on every node or choose another"
            ) from None
        return
    filesystem = storage.filesystem(timeout_s=5)
    probe = f"{storage.path}/.probe-{uuid.uuid4().hex}"
    try:
        with filesystem.open_output_stream(probe) as out:
            out.write(b"ok")
        filesystem.delete_file(probe)
    except OSError as e:
        raise SweepError(f"{where}: {_s3_problem(str(e), storage)}") from None


def _s3_problem(message: str, storage: Storage) -> str:
    text = message.lower()
    bucket = storage.path.split("/", 1)[0]
    at = storage.endpoint or "AWS S3"
    if "connect" in text or "curl" in text or "network" in text or "timed out" in text:
        return f"cannot reach the object store at {at}; check storage.endpoint and that the store runs"
    if "bucket" in text and ("not found" in text or "nosuchbucket" in text or "does not exist" in text):
        return f"bucket '{bucket}' does not exist at {at}; create it (e.g. `aws s3 mb s3://{bucket}`)"
    if "access denied" in text or "forbidden" in text or "invalidaccesskeyid" in text or "signature" in text:
        return f"{at} refused the credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a role)"
    return f"cannot write to it ({message.strip().splitlines()[0][:200]})"


_UNREACHABLE = ("Could not connect to server", "NETWORK_CONNECTION", "Connection refused", "Failed to connect")


def gone(text: str, storage: Storage | None = None) -> str | None:
    """Why the object store cannot be reached, from an error's text (pyarrow's S3 client, in the driver or a worker),
    naming the store (its endpoint and the sweep's folder there); None when the error is another one."""
    if not any(words in text for words in _UNREACHABLE):
        return None
    at = f" at {storage.endpoint or 'AWS S3'} ({storage.url})" if storage is not None else ""
    found = re.search(r"Failed to connect to [^;\n]+", text)
    return f"the object store{at} does not answer ({found.group(0).strip() if found else 'could not connect'})"


def tensorboard_logdir(name: str, results: Path) -> Path:
    """The folder TensorBoard reads for sweep ``name``: Ray Tune's trial folders (``tune/``) and the trials' work
    folders (``trials/*/tb``, histograms when asked), where the sweep's storage keeps them."""
    from sweep.record import find_record, known

    logdir = results / name
    if not logdir.is_dir():
        raise SweepError(f"no sweep '{name}' in {results}: {known(results)}")
    record = find_record(name, results)
    configured = record.spec.get("storage") if record is not None else None
    if not configured:
        return logdir
    place = resolve(StorageSpec.model_validate(configured), logdir, name)
    if place.remote:
        raise SweepError(
            f"sweep '{name}' keeps its Ray Tune folders in {place.url}; TensorBoard reads local folders "
            "(copy them down, e.g. `aws s3 sync`), and every metric is in MLflow (`sweep ui`)"
        )
    return Path(place.path)


def scratch() -> Path:
    """This node's own folder for a sweep whose storage is an object store: ``$SWEEP_SCRATCH`` or the temp folder.
    ``<scratch>/<name>/trials`` holds the trials' work folders, ``<scratch>/cache`` the decoded data (keyed by
    content, so sweeps over the same data share it)."""
    base = os.environ.get("SWEEP_SCRATCH") or os.path.join(tempfile.gettempdir(), f"sweep-{os.getuid()}")
    return Path(base)


def best_files(checkpoint: Any, into: Path) -> list[Path]:
    """The ``best*`` files of a Ray Tune checkpoint as local files: where they are for a local one, downloaded into
    ``into`` from an object store."""
    from pyarrow import fs

    filesystem = checkpoint.filesystem
    if filesystem is None or isinstance(filesystem, fs.LocalFileSystem):
        return sorted(Path(checkpoint.path).glob("best*"))
    into.mkdir(parents=True, exist_ok=True)
    out = []
    for info in filesystem.get_file_info(fs.FileSelector(checkpoint.path)):
        if info.type == fs.FileType.File and info.base_name.startswith("best"):
            local = into / info.base_name
            with filesystem.open_input_stream(info.path) as src, open(local, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            out.append(local)
    return sorted(out)
