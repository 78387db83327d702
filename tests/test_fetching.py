"""The fetch policy and the image store, without servers (the security suite attacks the real backend)."""

from __future__ import annotations

import multiprocessing
import socket
import time

import pytest

from labeler.media.fetching import Fetcher, FetchPolicy, is_public
from labeler.media.images import ImageError, decode
from labeler.media.imagestore import ImageStore
from labeler.models.registry import Registry
from labeler.studio.client import Connection
from labeler.studio.export import _recover, _swap_in, class_folders

from .conftest import png_bytes
from .test_security import bomb_png


def test_token_goes_only_to_label_studios_origin_and_data_paths():
    f = Fetcher(FetchPolicy(), Connection("https://ls.example.com:8443", "tok"))
    assert f._send_token("https://ls.example.com:8443/data/upload/1/a.png")
    assert not f._send_token("http://ls.example.com:8443/data/upload/1/a.png")  # cleartext
    assert not f._send_token("https://ls.example.com/data/upload/1/a.png")       # other port
    assert not f._send_token("https://ls.example.com:8443/api/projects/1/export")
    assert not f._send_token("https://evil.example.com:8443/data/upload/1/a.png")


def test_host_rules():
    p = FetchPolicy(allowed_hosts=("img.example.com", "*.cdn.example.net", "s.example.org:8080"))
    assert p.host_allowed("img.example.com", 443) == (True, True)
    assert p.host_allowed("a.cdn.example.net", 443) == (True, False)   # a pattern: public addresses only
    assert p.host_allowed("s.example.org", 8080)[0] and not p.host_allowed("s.example.org", 80)[0]
    assert not p.host_allowed("example.com", 443)[0]
    assert not any(is_public(ip) for ip in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1",
                                             "fc00::1", "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1"))
    assert is_public("8.8.8.8") and is_public("2606:4700::1111")
    # IPv6 forms that networks translate to an IPv4 address (NAT64, 6to4, IPv4-compatible): that one counts too
    assert not any(is_public(ip) for ip in ("64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1", "2002:7f00:1::", "::127.0.0.1"))
    assert is_public("64:ff9b::808:808") and is_public("2002:808:808::1")


def test_dot_segments_never_take_the_token_elsewhere_on_label_studio():
    # requests collapses "..": /data/../api/current-user/token would be sent, with the token, to the API
    f = Fetcher(FetchPolicy(), Connection("http://127.0.0.1:1", "tok"))
    for ref in ("/data/../api/current-user/token", "/data/upload/../../api/projects/1/export",
                "http://127.0.0.1:1/data/upload/%2e%2e/%2E%2E/api/x", "/data/upload/..%2f..%2fapi/x",
                "/data/upload/x/./y.png", "/data/upload\\..\\..\\api/x"):
        with pytest.raises(ImageError, match="path segments"):
            f.get(ref)
    with pytest.raises(ImageError, match="cannot download"):  # a name with dots is a file name: fetched
        f.get("/data/upload/1/a..b.png")


def test_malformed_urls_are_one_tasks_error():
    f = Fetcher(FetchPolicy(allowed_hosts=("*",)), Connection("http://127.0.0.1:1", "tok"))
    for ref in ("http://[::1/x.png", "http://h:99999/x.png", "http://h:abc/x.png"):
        with pytest.raises(ImageError, match="malformed URL"):
            f.get(ref)


def test_other_ports_of_label_studios_host_are_other_services():
    with socket.socket() as other:  # a service on Label Studio's host, another port: it accepts, never answers
        other.bind(("127.0.0.1", 0))
        other.listen(4)
        f = Fetcher(FetchPolicy(allowed_hosts=("*",), timeout_s=2), Connection("http://127.0.0.1:1", "tok"))
        with pytest.raises(ImageError, match="non-public address"):
            f.get(f"http://127.0.0.1:{other.getsockname()[1]}/internal-admin")


def test_refused_references_fail_fast():
    f = Fetcher(FetchPolicy(), Connection())
    for ref in ("/etc/passwd", "file:///etc/passwd", "gopher://x/", "http://127.0.0.1:1/x", "x" * 5000, None, 3):
        with pytest.raises(ImageError):
            f.get(ref)


def test_local_files_only_regular_and_under_the_root(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(1))
    (tmp_path / "sub").mkdir()
    f = Fetcher(FetchPolicy(local_root=tmp_path), Connection())
    assert f.get(str(tmp_path / "a.png")) == png_bytes(1)
    for ref in (str(tmp_path / "sub"), str(tmp_path / ".." / "x"), "/etc/passwd", "/dev/zero"):
        with pytest.raises(ImageError):
            f.get(ref)
    (tmp_path / "link.png").symlink_to("/etc/passwd")
    with pytest.raises(ImageError, match="outside"):
        f.get(str(tmp_path / "link.png"))


def test_pixel_bomb_is_refused_before_decoding():
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match="pixels"):
        decode(bomb_png())
    assert time.perf_counter() - t0 < 1


def test_image_store_reuses_uploads_forever_and_other_urls_for_a_ttl(tmp_path):
    store = ImageStore(tmp_path / "s.sqlite", max_bytes=10_000, ttl_s=0.2)
    conn = Connection("http://ls:8080", "t")
    refs = ["/data/upload/1/a.png", "http://img.example.com/b.png", "data:image/png;base64,AAAA", "/tmp/x.png"]
    store.put_many(conn, [(r, png_bytes(i)) for i, r in enumerate(refs)])
    assert [x is not None for x in store.get_many(conn, refs)] == [True, True, False, False]
    assert store.get_many(Connection("http://other:8080", "t"), refs[:1]) == [None]  # scoped by Label Studio
    time.sleep(0.3)
    assert [x is not None for x in store.get_many(conn, refs[:2])] == [True, False]
    store.put_many(conn, [(f"/data/upload/1/{i}.png", bytes(3000) + bytes([i])) for i in range(5)])
    assert store._size <= 10_000  # least recently used evicted


def _claim(model_dir: str, n: int, out) -> None:
    reg = Registry(model_dir, keep=1000)
    out.put([reg.add("1", lambda folder: {"kind": "cnn"}) for _ in range(n)])


def test_version_names_never_collide_across_processes(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), 10, q)) for _ in range(4)]
    for p in procs:
        p.start()
    names = [n for _ in procs for n in q.get(timeout=120)]
    for p in procs:
        p.join()
    assert len(names) == 40 and len(set(names)) == 40
    assert len(Registry(tmp_path).list("1")) == 40


def test_export_swap_never_loses_the_old_dataset(tmp_path):
    out, new = tmp_path / "ds", tmp_path / ".ds.partial-1"
    out.mkdir()
    (out / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    _swap_in(new, out)
    assert (out / "new.txt").exists() and not list(tmp_path.glob(".ds.*"))
    # killed after moving the old dataset aside, before the new one was in place
    (tmp_path / ".ds.old-99").mkdir()
    (tmp_path / ".ds.old-99" / "old.txt").write_text("old")
    import shutil
    shutil.rmtree(out)
    _recover(out)
    assert (out / "old.txt").read_text() == "old" and not list(tmp_path.glob(".ds.*"))


def test_class_names_cannot_escape_the_export_folder():
    folders = class_folders(["../../x", "/etc", "ok", "..", "a/b", "a_b"])
    assert all("/" not in f and not f.startswith(".") for f in folders.values())
    assert len(set(folders.values())) == len(folders)


def test_cloud_storage_images_go_through_label_studios_resolve_endpoint():
    """An ``s3://`` task image becomes Label Studio's resolve endpoint (with the token); its redirect
    to the presigned URL is followed without the token, to a public address or a host named in the
    allow-list only. Real HTTP servers on loopback stand in for Label Studio and the bucket."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from labeler.dev.demo import template
    from labeler.labelconfig import parse_label_config

    seen: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append((self.path, self.headers.get("Authorization")))
            if self.path.startswith("/tasks/7/resolve/"):
                uri = base64.urlsafe_b64decode(self.path.split("fileuri=")[1]).decode()
                assert uri == "s3://bucket/eye.png"
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{self.server.server_port}/eye.png?sig=1")
                self.end_headers()
                return
            body = png_bytes(3)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = parse_label_config(template("binary"))
        ref = config.image_ref({"id": 7, "data": {"image": "s3://bucket/eye.png"}})
        assert ref.startswith("/tasks/7/resolve/?fileuri=")
        assert config.image_ref({"id": 7, "data": {"image": "/data/upload/1/a.png"}}) == "/data/upload/1/a.png"
        conn = Connection(f"http://127.0.0.1:{server.server_port}", "tok")
        with pytest.raises(ImageError, match="non-public"):  # the bucket stand-in is on loopback
            Fetcher(FetchPolicy(), conn).get(ref)
        named = FetchPolicy(allowed_hosts=("localhost",))  # a private bucket host the operator named
        assert Fetcher(named, conn).get(ref) == png_bytes(3)
        resolve, bucket = seen[-2], seen[-1]
        assert resolve[1] == "Token tok" and bucket == ("/eye.png?sig=1", None)  # no token to the bucket
        with pytest.raises(ImageError):  # the resolve rule is Label Studio's: no token, no exception elsewhere
            Fetcher(named, Connection()).get(ref)
    finally:
        server.shutdown()


def test_a_request_decodes_each_picture_once_and_stops_at_its_deadline(tmp_path):
    import base64

    from labeler.config import Settings
    from labeler.models.predictor import Predictor

    predictor = Predictor(Settings(model_dir=tmp_path, zeroshot_model=None), local_files=False)
    url = "data:image/png;base64," + base64.b64encode(png_bytes(5)).decode()
    same = predictor.fetch([url, url, "data:image/png;base64,AAAA"], Connection())
    assert same[0].sample is same[1].sample is not None and same[0].key == same[1].key
    assert same[2].sample is None and same[2].error
    late = predictor.fetch([url], Connection(), deadline=time.monotonic() - 1)
    assert late[0].sample is None and "time budget" in late[0].error
