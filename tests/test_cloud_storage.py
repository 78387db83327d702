"""Task images in Label Studio's S3 storage reach the model through Label Studio's resolve endpoint.

Real parts: Label Studio (its S3 import storage, synced), a moto S3 server as the bucket, the
tiny BLIP-2. The backend holds no cloud credentials: only Label Studio does.
"""

from __future__ import annotations

import pytest

from labeler.config import Settings
from labeler.dev.demo import template
from labeler.models.predictor import Predictor
from labeler.studio.client import Studio
from labeler.studio.tasks import iter_tasks, project_config

from .conftest import png_bytes

pytestmark = pytest.mark.integration


@pytest.fixture()
def bucket():
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    url = f"http://127.0.0.1:{server._server.server_port}"
    s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                      region_name="us-east-1")
    s3.create_bucket(Bucket="eyes")
    for i in range(3):
        s3.put_object(Bucket="eyes", Key=f"img/{i}.png", Body=png_bytes(i, 32))
    yield url
    server.stop()


def test_s3_task_images_are_scored_through_label_studios_resolve_endpoint(label_studio, bucket, tiny_model,
                                                                          tmp_path):
    url, token = label_studio
    studio = Studio(url, token)
    pid = studio.projects.create(title="s3 images", label_config=template("binary")).id
    storage = studio.import_storage.s3.create(
        project=pid, bucket="eyes", prefix="img", regex_filter=r".*\.png", use_blob_urls=True, presign=True,
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1", s3endpoint=bucket)
    studio.import_storage.s3.sync(id=storage.id)
    tasks = list(iter_tasks(studio, pid))
    # Label Studio's task API already points s3:// images at its resolve endpoint; tasks sent to
    # /predict and raw data carry the s3:// URI, which image_ref turns into the same endpoint.
    assert all(f"/tasks/{t['id']}/resolve/?fileuri=" in t["data"]["image"] for t in tasks)
    config = project_config(studio, pid)
    raw = [config.image_ref({"id": t["id"], "data": {"image": f"s3://eyes/img/{i}.png"}}) for i, t in enumerate(tasks)]
    assert all(r.startswith(f"/tasks/{t['id']}/resolve/?fileuri=") for r, t in zip(raw, tasks))
    refs = [config.image_ref(t) for t in tasks] + raw
    # The presigned URLs point at the bucket on loopback: an operator would name such a private host.
    predictor = Predictor(Settings(model_dir=tmp_path, zeroshot_model=str(tiny_model), local_files_only=True,
                                   allowed_hosts=bucket.split("//")[1]), local_files=False)
    predictor.load_scorer()
    items = predictor.samples(refs, studio.conn)
    assert [it.error for it in items] == [None] * 6
    expected = {png_bytes(i, 32) for i in range(3)}
    from labeler.models.cache import content_key

    assert {it.key for it in items} == {content_key(b) for b in expected}  # the very bytes in the bucket
