"""The drive.* API: parameters checked, and what a web page may ask kept apart from
what only local programs may (paths on this machine), then the service
(``lannode.drive.service``) does the work."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lannode.core import api
from lannode.core.api import require
from lannode.core.drive import DEFAULT_K, DEFAULT_M

if TYPE_CHECKING:
    from lannode.drive.service import DriveService


def register(drive: DriveService, server: api.Methods) -> None:
    async def drive_put(params: dict[str, Any], caller: api.Principal) -> Any:
        if "upload" in params:  # a file a page handed to this node (lannode.uploads)
            if drive.uploads is None:
                raise api.ApiError(api.ErrorCode.UNAVAILABLE, "this node takes no uploads")
            path = drive.uploads.complete_path(require(params, "upload", str))
        else:
            if not caller.is_local:
                raise api.ApiError(api.ErrorCode.FORBIDDEN, 'a web page puts a file it uploaded ("upload"), not a path on this machine')
            path = Path(require(params, "path", str)).expanduser()
        k = require(params, "k", int, optional=True) or DEFAULT_K
        m = require(params, "m", int, optional=True)
        share = require(params, "share", list, optional=True) or []
        if not all(isinstance(s, str) for s in share):
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, '"share" is a list of peers and #groups')
        return await drive.put(
            path,
            k=k,
            m=DEFAULT_M if m is None else m,
            name=require(params, "name", str, optional=True),
            share=share,
            allow_fewer=bool(require(params, "allow_fewer", bool, optional=True)),
            op=require(params, "op", str, optional=True) or "",
        )

    async def drive_get(params: dict[str, Any], caller: api.Principal) -> Any:
        op = require(params, "op", str, optional=True) or ""
        if "out" in params:
            if not caller.is_local:
                raise api.ApiError(api.ErrorCode.FORBIDDEN, 'a web page saves to this node\'s downloads folder ({"to": "downloads"}), not to a path it names')
            return await drive.get(require(params, "file", str), Path(require(params, "out", str)).expanduser(), op=op)
        if require(params, "to", str) != "downloads":
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, '"to" is "downloads" (or give "out", from a local program)')
        manifest, record = drive.resolve(require(params, "file", str))
        if record is None:
            raise api.ApiError(api.ErrorCode.FORBIDDEN, f"this node has no read capability for {manifest.file_id}: ask its owner ({drive.peers.name_of(manifest.owner)}) to share it")
        return await drive.get(manifest.file_id, None, op=op)

    async def drive_ls(params: dict[str, Any], caller: api.Principal) -> Any:
        return drive.ls()

    async def drive_rm(params: dict[str, Any], caller: api.Principal) -> Any:
        return await drive.rm(require(params, "file", str))

    async def drive_share(params: dict[str, Any], caller: api.Principal) -> Any:
        targets = require(params, "with", list)
        if not targets or not all(isinstance(t, str) for t in targets):
            raise api.ApiError(api.ErrorCode.BAD_PARAMS, '"with" is a list of peers and #groups')
        return await drive.share(require(params, "file", str), targets)

    async def drive_verify(params: dict[str, Any], caller: api.Principal) -> Any:
        return await drive.verify(require(params, "file", str, optional=True))

    async def drive_repair(params: dict[str, Any], caller: api.Principal) -> Any:
        return await drive.repair(require(params, "file", str, optional=True))

    async def drive_status(params: dict[str, Any], caller: api.Principal) -> Any:
        return drive.status()

    async def drive_info(params: dict[str, Any], caller: api.Principal) -> Any:
        return drive.info(require(params, "file", str))

    # A page (the person at this machine) may put what it uploaded, get into the downloads
    # folder, share and remove; only local programs name paths.
    server.method("drive.put", drive_put, '{"path" (local programs) or "upload", "k"?, "m"?, "name"?, "share"?: [peer|#group], "allow_fewer"?, "op"?}: encrypt, code and place a file; progress as drive.progress events.')
    server.method("drive.get", drive_get, '{"file": id|name|cap, "out" (local programs) or "to": "downloads", "op"?}: fetch from the k best holders and decrypt.')
    server.method("drive.ls", drive_ls, "Every file in the drive: id, size, k, m, health and holders; the name where it was shared with this node.")
    server.method("drive.rm", drive_rm, '{"file"}: remove a file shared with this node; its holders drop their fragments.')
    server.method("drive.share", drive_share, '{"file", "with": [peer|#group]}: give nodes the name and read capability.')
    server.method("drive.info", drive_info, '{"file"}: one file, with its read and verify capabilities where this node has them.', local_only=True)
    server.method("drive.verify", drive_verify, '{"file"?}: every holder checks its fragments now; per fragment ok, missing, corrupt or unreachable.')
    server.method("drive.repair", drive_repair, '{"file"?}: verify, then rebuild every fragment that is not ok (no grace period).', local_only=True)
    server.method("drive.status", drive_status, "Per node: fragments, bytes and quota of drive storage.")
