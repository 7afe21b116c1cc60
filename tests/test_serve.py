"""The inference server (python -m rocl_zoo.serve), driven over HTTP as a real process on a free loopback port.

One server (torch, batching up to 8 requests, small limits so the limit tests stay small) is shared by the module;
the ONNX backend gets its own, unbatched one (max batch 1: LitServe's single-request loop), marked slow.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rocl_zoo
from rocl_zoo.inference import prepare_images
from rocl_zoo.zoo import get_entry

pytest.importorskip("litserve", reason="the server needs the `serve` extra")

from rocl_zoo import serve  # noqa: E402

MODEL = "cnn4_rocl.fmnist_at"
ASSETS = sorted((Path(rocl_zoo.__file__).parent / "assets").glob("fmnist_*.png"))
LIMITS = ["--max-images", "4", "--max-bytes", "200000", "--max-pixels", "250000"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def start(*extra):
    return serve.launched(["--model", MODEL, "--threads", "1", "--device", "cpu", *LIMITS, *extra], env=ENV)


@pytest.fixture(scope="module")
def url():
    with start("--max-batch-size", "8") as u:
        yield u


@pytest.fixture(scope="module")
def model():
    return rocl_zoo.load(MODEL)


def b64(path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def request(url, method="GET", path="/predict", body=None, content_type="application/json"):
    """(status, parsed JSON or text) of one request on a fresh connection."""
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        conn.request(method, path, body, {"Content-Type": content_type} if body is not None else {})
        r = conn.getresponse()
        data = r.read().decode()
        try:
            return r.status, json.loads(data)
        except json.JSONDecodeError:
            return r.status, data
    finally:
        conn.close()


def post(url, payload):
    return request(url, "POST", body=payload)


def multipart(files: list[tuple[str, bytes]], fields: dict | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body with files (field name, bytes) and text fields."""
    boundary = "rocl-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in (fields or {}).items()]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x.png"\r\n'
              f'Content-Type: image/png\r\n\r\n'.encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def torch_logits(model, paths) -> torch.Tensor:
    with torch.no_grad():
        return model(prepare_images(list(paths), model))


# ------------------------------------------------------------------------------------------------ answers


def test_topk_and_logits_equal_rocl_zoo_predict(url, model):
    paths = ASSETS[:3]
    status, got = post(url, {"images": [b64(p) for p in paths], "topk": 3})
    assert status == 200, got
    want = rocl_zoo.predict(model, paths, topk=3)
    assert [[p["label"] for p in row] for row in got["predictions"]] == [[p["label"] for p in row] for row in want]
    assert [[p["index"] for p in row] for row in got["predictions"]] == [[p["index"] for p in row] for row in want]
    np.testing.assert_allclose([[p["prob"] for p in row] for row in got["predictions"]],
                               [[p["prob"] for p in row] for row in want], atol=1e-5)
    assert "notes" not in got  # Fashion-MNIST's own images are what the model was trained on

    status, got = post(url, {"image": b64(paths[0]), "output": "logits"})
    assert status == 200, got
    np.testing.assert_allclose(got["logits"], torch_logits(model, paths[:1]).numpy(), atol=1e-4)
    status, got = post(url, {"image": "data:image/png;base64," + b64(paths[0])})  # a browser's data URL
    assert status == 200 and len(got["predictions"][0]) == serve.DEFAULT_TOPK, got
    assert got["predictions"][0][0]["label"] == want[0][0]["label"]


def test_features_equal_extract_features(url, model):
    paths = ASSETS[:2]
    status, got = post(url, {"images": [b64(p) for p in paths], "output": "features"})
    assert status == 200, got
    want = rocl_zoo.extract_features(model, paths)
    assert np.shape(got["features"]) == (2, model.num_features) == tuple(want.shape)
    np.testing.assert_allclose(got["features"], want.numpy(), atol=1e-5)


def test_multipart_upload_equals_base64(url):
    body, ctype = multipart([("image", ASSETS[0].read_bytes()), ("images", ASSETS[1].read_bytes())],
                            {"output": "logits"})
    status, got = request(url, "POST", body=body, content_type=ctype)
    assert status == 200, got
    _, want = post(url, {"images": [b64(ASSETS[0]), b64(ASSETS[1])], "output": "logits"})
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-5)
    body, ctype = multipart([("image", ASSETS[0].read_bytes())], {"topk": "2"})
    status, got = request(url, "POST", body=body, content_type=ctype)
    assert status == 200 and len(got["predictions"][0]) == 2, got


def test_images_unlike_the_training_data_carry_a_note(url):
    light = np.full((28, 28), 230, dtype=np.uint8)  # a light background, where Fashion-MNIST's is black
    status, got = post(url, {"image": base64.b64encode(png(light)).decode()})
    assert status == 200 and "light background" in got["notes"][0], got


# ------------------------------------------------------------------------------------------------ bad input

BIG = np.zeros((600, 600), dtype=np.uint8)  # 360,000 pixels, over the 250,000 limit; a small PNG
BAD = {
    "not JSON": (b"{not json", 400, "not valid JSON"),
    "a JSON list": ([1, 2], 400, "JSON object"),
    "no image": ({"topk": 3}, 400, '"image"'),
    "unknown field": ({"img": "x"}, 400, "unknown field"),
    "image and images": ({"image": "x", "images": ["x"]}, 400, '"image"'),
    "empty images": ({"images": []}, 400, "non-empty list"),
    "image not a string": ({"image": 5}, 400, "base64 string"),
    "bad base64": ({"image": "***"}, 400, "not valid base64"),
    "not an image": ({"image": base64.b64encode(b"hello, world").decode()}, 422, "not an image"),
    "truncated image": ({"image": base64.b64encode(ASSETS[0].read_bytes()[:60]).decode()}, 422, "not a readable"),
    "too many images": ({"images": ["x"] * 5}, 413, "limit of 4"),
    "too many pixels": ({"image": base64.b64encode(png(BIG)).decode()}, 413, "600x600"),
    "too many bytes": ({"image": "A" * 250_000}, 413, "200,000 bytes"),
    "topk 0": ({"image": "x", "topk": 0}, 400, "topk"),
    "topk text": ({"image": "x", "topk": "three"}, 400, "topk"),
    "topk float": ({"image": "x", "topk": 1.5}, 400, "topk"),
    "topk bool": ({"image": "x", "topk": True}, 400, "topk"),
    "bad output": ({"image": "x", "output": "probs"}, 400, "output must be one of"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_a_4xx_and_the_server_keeps_serving(url, case):
    body, want_status, fragment = BAD[case]
    status, got = request(url, "POST", body=body)
    assert status == want_status, got
    assert fragment in got["detail"], got
    status, got = post(url, {"image": b64(ASSETS[0])})
    assert status == 200, got


def test_bad_multipart_and_other_routes(url):
    body, ctype = multipart([("image", b"not a png")])
    status, got = request(url, "POST", body=body, content_type=ctype)
    assert status == 422 and "image 1" in got["detail"], got
    status, got = request(url, "POST", body=b"--x\r\ngarbage", content_type="multipart/form-data; boundary=x")
    assert 400 <= status < 500, got
    assert request(url, "GET", "/predict")[0] == 405
    assert request(url, "GET", "/nope")[0] == 404


def test_concurrent_clients_are_all_answered_each_with_its_own_result(url, model):
    """24 clients at once, batched together, mixing top-1, features and bad input: each request gets its own
    answer, and the bad ones fail alone."""
    labels = [p[0]["label"] for p in rocl_zoo.predict(model, ASSETS, topk=1)]
    features = rocl_zoo.extract_features(model, ASSETS).numpy()
    results, lock = {}, threading.Lock()

    def client(i):
        for j in range(3):
            k, kind = (i + j) % len(ASSETS), ("bad", "features", "topk", "topk", "topk")[(i + 2 * j) % 5]
            payload = {"image": "***"} if kind == "bad" else {"image": b64(ASSETS[k]), "output": kind, "topk": 1}
            answer = post(url, payload)
            with lock:
                results[i, j] = (k, kind, answer)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 72
    for k, kind, (status, got) in results.values():
        assert status == (400 if kind == "bad" else 200), got
        if kind == "topk":
            assert got["predictions"][0][0]["label"] == labels[k], got
        if kind == "features":
            np.testing.assert_allclose(got["features"][0], features[k], atol=1e-5)


def test_api_hooks_for_one_request_and_for_a_batch(model):
    """RoclAPI in process: LitServe's single loop (max batch 1) passes predict one request, the batched loop a list;
    a bad request in a batch stays a 4xx answer of its own."""
    api = serve.RoclAPI(MODEL, backend="torch", device="cpu", threads=None, onnx_paths=None,
                        input_cfg={"pretrained_cfg": dict(model.pretrained_cfg), "in_chans": model.in_chans},
                        labels=list(model.pretrained_cfg["label_names"]),
                        limits={"max_images": 4, "max_pixels": 10_000}, max_batch_size=8, batch_timeout=0.0)
    api.setup("cpu")
    good = api.decode_request({"images": [b64(p) for p in ASSETS[:2]], "output": "logits"})
    one = api.encode_response(api.predict(good))
    np.testing.assert_allclose(one["logits"], torch_logits(model, ASSETS[:2]).numpy(), atol=1e-5)
    batch = [api.decode_request(r) for r in ({"image": b64(ASSETS[2]), "topk": 2}, {"image": 3},
                                            {"image": b64(ASSETS[3]), "output": "features"})]
    answers = [api.encode_response(y) for y in api.predict(batch)]
    assert answers[0]["predictions"][0][0]["label"] == rocl_zoo.predict(model, ASSETS[2], topk=1)[0][0]["label"]
    assert answers[1].status_code == 400 and b"base64 string" in answers[1].body
    assert np.shape(answers[2]["features"]) == (1, model.num_features)


def test_the_batched_loop_blocks_while_idle_then_takes_what_queued():
    """BlockingBatchedLoop with LitServe's own collation: no busy polling while idle, then up to max_batch_size of
    the queued requests in order, with and without a batch timeout."""
    import queue
    import time
    import types

    loop = serve.BlockingBatchedLoop()
    loop._restart_workers = False  # as LitServe's worker sets it: no START messages, so no transport is needed
    api = types.SimpleNamespace(max_batch_size=4, batch_timeout=0.0, request_timeout=30, stream=False)
    q = queue.Queue()
    t = time.monotonic()
    assert loop.get_batch_requests(api, q, None) == ([], []) and time.monotonic() - t > 0.9
    for i in range(6):
        q.put((0, f"uid{i}", time.monotonic(), {"i": i}))
    assert [p[2]["i"] for p in loop.get_batch_requests(api, q, None)[0]] == [0, 1, 2, 3]
    api.batch_timeout = 0.05
    assert [p[2]["i"] for p in loop.get_batch_requests(api, q, None)[0]] == [4, 5]


# ------------------------------------------------------------------------------------------------ routes


def test_health_and_info_carry_the_models_metadata(url):
    assert request(url, "GET", "/health") == (200, "ok")
    status, info = request(url, "GET", "/info")
    assert status == 200
    m, entry = info["model"], get_entry(MODEL)
    assert m["name"] == MODEL and m["sha256"] == entry.sha256 and m["architecture"] == "cnn4_rocl"
    assert m["threat_model"] == {"norm": entry.metrics["norm"], "eps": entry.metrics["eps"]}
    assert m["accuracy"]["clean"] == round(entry.metrics["clean_acc"], 2)
    assert m["accuracy"]["pgd20"] == round(entry.metrics["pgd20_acc"], 2)
    assert m["accuracy"]["autoattack"] == round(entry.metrics["autoattack_acc"], 2)
    assert m["labels"][9] == "Ankle boot" and m["input_size"] == [1, 28, 28]
    assert m["serving"]["max_batch_size"] == 8 and m["serving"]["max_images"] == 4


def test_a_folder_copy_of_a_zoo_model_gets_its_metrics_by_sha256(model, tmp_path):
    folder = rocl_zoo.save_pretrained(model, tmp_path / "copy", dataset="fashion_mnist")
    info = serve.model_info(rocl_zoo.load(folder), str(folder), "torch")
    assert info["name"] == MODEL and info["accuracy"]["autoattack"] is not None
    torch.manual_seed(1)
    other = rocl_zoo.save_pretrained(rocl_zoo.create_model("cnn4_rocl.fmnist"), tmp_path / "other",
                                     dataset="fashion_mnist")
    info = serve.model_info(rocl_zoo.load(other), str(other), "torch")
    assert info["name"] == str(other) and info["accuracy"] is None and info["threat_model"] is None


@pytest.mark.slow  # a second server, and two ONNX exports at its start: 12-23 s here
def test_onnx_backend_unbatched_equals_torch(model):
    paths = ASSETS[:3]
    with start("--backend", "onnx", "--max-batch-size", "1") as onnx_url:
        status, got = post(onnx_url, {"images": [b64(p) for p in paths], "output": "logits"})
        assert status == 200, got
        np.testing.assert_allclose(got["logits"], torch_logits(model, paths).numpy(), atol=1e-4)
        status, got = post(onnx_url, {"images": [b64(p) for p in paths], "output": "features"})
        np.testing.assert_allclose(got["features"], rocl_zoo.extract_features(model, paths).numpy(), atol=1e-4)
        status, got = post(onnx_url, {"images": [b64(p) for p in paths], "topk": 2})
        want = rocl_zoo.predict(model, paths, topk=2)
        assert [[p["label"] for p in r] for r in got["predictions"]] == [[p["label"] for p in r] for r in want]
        assert request(onnx_url, "POST", body={"image": "***"})[0] == 400
        assert request(onnx_url, "GET", "/info")[1]["model"]["backend"] == "onnx"


# ------------------------------------------------------------------------------------------------ command line


def test_command_line_errors_before_any_process_starts(capsys, monkeypatch):
    assert serve.build_parser().parse_args(["--model", MODEL]).host == "127.0.0.1"
    assert serve.main(["--model", MODEL, "--port", "80"]) == 2
    assert "--port" in capsys.readouterr().err
    assert serve.main(["--model", MODEL, "--max-batch-size", "0"]) == 2
    assert "--max-batch-size" in capsys.readouterr().err
    assert serve.main(["--model", "no_such_model.x"]) == 2
    assert "No zoo entry" in capsys.readouterr().err
    assert serve.main(["--model", MODEL, "--backend", "onnx", "--amp", "bf16"]) == 2
    assert "--amp applies to the torch backend" in capsys.readouterr().err
    monkeypatch.setattr(serve, "ls", None)
    assert serve.main(["--model", MODEL]) == 2
    assert 'pip install "rocl-zoo[serve]"' in capsys.readouterr().err
    for action in serve.build_parser()._actions:
        assert action.help, action.dest


def test_bf16_autocast_runner_agrees_with_fp32_where_the_cpu_has_native_bf16():
    from rocl_zoo.data import load_dataset
    from rocl_zoo.precision import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: --amp auto serves in fp32 here")
    x = load_dataset("fashion_mnist", "test").images[:64].float() / 255
    fp32, bf16 = serve.TorchRunner(MODEL, "cpu"), serve.TorchRunner(MODEL, "cpu", "bf16")
    a, b = fp32(x, "logits"), bf16(x, "logits")
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.95 and (a - b).abs().max() < 0.5
    assert not torch.equal(a, b)  # it did run in bf16
