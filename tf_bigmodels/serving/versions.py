"""The versions of one served model: which one is served, the state of each, new ones picked up.

TF Serving's file-system source, in small: the export directory is scanned every few seconds;
a version directory newer than the one served is loaded and warmed up beside it, then served
from the next request on, and the old one stops being served (policy "latest 1", TF Serving's
default: one version, the newest that loads). A request keeps the `ServedModel` it started
with, so requests already running finish on the old version; its memory is freed when the
last of them ends.

A version is complete when it appears: an export writes a `.partial-*` directory and renames
it (one atomic step), and the scan (`tf_bigmodels.run_directory.export_versions`) sees numeric
directories only. A version that fails to load is refused with one log line, keeps state END
with its error in TF Serving's status, and is not tried again until its files change (a
version copied in by hand, caught half-copied, gets another try once the copy goes on).
"""

import logging
import os
import threading

from tf_bigmodels.run_directory import export_versions, version_path

log = logging.getLogger("tf_bigmodels.serving")

LOADING, AVAILABLE, END = "LOADING", "AVAILABLE", "END"
_OK = {"error_code": "OK", "error_message": ""}


class ModelVersions:
    """One served name: the `ServedModel` in service, every version's state, and the scan.

    Args:
        name: str. The model's name in URLs.
        export_dir: str. Its directory of numbered versions.
        load: callable `(name, export_dir, version) -> ServedModel` (version None: the newest).
        warm_up: callable taking a `ServedModel`, run before it is served. Defaults to calling
            its `warm_up()`.

    Example:

    >>> import types
    >>> os.makedirs("exports/m/1")
    >>> load = lambda name, export_dir, version: types.SimpleNamespace(version=version)
    >>> versions = ModelVersions("m", "exports/m", load, warm_up=lambda model: None)
    >>> versions.load_newest().version
    1
    >>> os.makedirs("exports/m/2"); versions.poll().version, versions.served.version
    (2, 2)
    >>> [(s["version"], s["state"]) for s in versions.status()]
    [('2', 'AVAILABLE'), ('1', 'END')]
    """

    def __init__(self, name, export_dir, load, *, warm_up=None):
        self.name, self.export_dir = name, export_dir
        self._load = load
        self._warm_up = warm_up or (lambda model: model.warm_up())
        self.served = None
        self._states = {}  # version -> (state, status)
        self._refused = {}  # version -> fingerprint of its files when it failed
        self._scan_error = None  # the last scan's error, logged once
        self._lock = threading.Lock()

    def load_newest(self):
        """Loads and warms up the newest version and serves it; raises if it cannot load."""
        versions = export_versions(self.export_dir)
        model = self._load_version(versions[-1] if versions else None, raise_errors=True)
        return model

    def poll(self):
        """Loads, warms up and serves a version newer than the one served, if one appeared.

        Returns:
            The newly served `ServedModel`, or None (nothing new, or it was refused).
        """
        served = self.served.version if self.served is not None else 0
        try:
            versions = export_versions(self.export_dir)
        except OSError as error:  # the directory unreadable for now: scan again later
            if str(error) != self._scan_error:
                log.error(
                    "%s: cannot scan %s for new versions: %s", self.name, self.export_dir, error
                )
            self._scan_error = str(error)
            return None
        self._scan_error = None
        for version in reversed(versions):
            if version <= served:
                return None
            fingerprint = _fingerprint(version_path(self.export_dir, version))
            if self._refused.get(version) == fingerprint:
                continue  # refused, and its files have not changed since
            model = self._load_version(version, fingerprint=fingerprint)
            if model is not None:
                return model
        return None

    def _load_version(self, version, *, fingerprint=None, raise_errors=False):
        if version is not None:
            self._set(version, LOADING, _OK)
        try:
            model = self._load(self.name, self.export_dir, version)
            self._warm_up(model)
        except Exception as error:  # noqa: BLE001 (a damaged version must not stop the server)
            if raise_errors:
                raise
            message = " ".join(str(error).split())[:500] or type(error).__name__
            log.error(
                "%s: version %s in %s cannot be served, keeping version %s: %s",
                self.name,
                version,
                self.export_dir,
                self.served.version if self.served is not None else None,
                message,
            )
            self._refused[version] = fingerprint
            self._set(version, END, {"error_code": "UNKNOWN", "error_message": message})
            return None
        with self._lock:
            previous, self.served = self.served, model
            self._states[model.version] = (AVAILABLE, _OK)
            if previous is not None:
                self._states[previous.version] = (END, _OK)
        return model

    def _set(self, version, state, status):
        with self._lock:
            self._states[version] = (state, status)

    def status(self, version=None):
        """TF Serving's `model_version_status` entries, newest version first (one if `version`).

        Args:
            version: str or None. A version number as in a URL.

        Returns:
            list of `{"version", "state", "status"}` dicts (empty for an unknown version).
        """
        with self._lock:
            states = sorted(self._states.items(), reverse=True)
        return [
            {"version": str(v), "state": state, "status": dict(status)}
            for v, (state, status) in states
            if version is None or str(v) == version
        ]


def _fingerprint(path):
    """What changes when files are added to a version directory or rewritten in it."""
    stamps = []
    for root, directories, files in os.walk(path):
        directories.sort()
        for name in sorted(files):
            try:
                stat = os.stat(os.path.join(root, name))
            except OSError:
                continue
            stamps.append(
                (os.path.relpath(os.path.join(root, name), path), stat.st_size, stat.st_mtime_ns)
            )
    return tuple(stamps)
