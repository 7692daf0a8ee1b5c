"""What a wire-level sweep of both services found (2026-12), each tried against the real gRPC servers: a client holding
every server thread with streams that never send a header, a question whose tokens cost far more than its characters
suggest, a delivered job result whose id is a path, refusals that named the provider's folders or arrived as UNKNOWN,
JSON nested past the parser, names with a trailing newline, echoed inputs too long for a status, and connectors
left behind by a Forget during their training.

Each case was an internal error, a hang, a wrong status, or a file written outside the workspace before the fix."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import tarfile
import threading
import time
from pathlib import Path

import grpc
import pytest

from protocol.artifact import SIGNATURE_FILE, TENSORS_FILE, pack_artifact
from protocol.request_auth import UPLOAD_METHOD, sign_request, upload_body
from protocol.rpc.llamdex.v1 import client_pb2, client_pb2_grpc, common_pb2, provider_pb2
from protocol.rpc_errors import error_code, guard
from protocol.tls import open_channel
from provider_party.service.admission import StreamSlots
from provider_party.service.config import ProviderLimits
from provider_party.service.server import ProviderServer
from tests._grpc_fixtures import make_artifact, make_parties, provider_client, provider_config

MiB = 1 << 20


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from client_party.config import ClientConfig
    from client_party.service import ClientServer
    from simulations.two_party_demo import free_port

    root = tmp_path_factory.mktemp("wire-sweep")
    p = make_parties(root)
    # 7 threads, 4 kept for short calls: 3 streams at once in all, 2 of one client; a header is due within 1.5 s
    limits = ProviderLimits(max_artifact_bytes=2 * MiB, max_chunk_bytes=256 * 1024, max_message_bytes=1 * MiB, max_requests_per_second=1000,
                            max_workers=7, reserved_workers=4, max_streams_per_client=2, upload_header_timeout_s=1.5, max_question_tokens=64)
    provider = ProviderServer(provider_config(p, clients=("alice", "bob", "mallory"), limits=limits)).start()
    ccfg = ClientConfig(client_id="alice", key=root / "keys" / "alice.key", workspace=root / "alice-ws", max_epsilon=2.0,
                        datasets=("titanic",), listen=f"127.0.0.1:{free_port()}", provider_address=provider.address,
                        provider_public_key=p.pubs["provider"], tls=p.tls["alice"])
    client = ClientServer(ccfg).start()
    ch = open_channel(client.address, p.tls["orchestrator"])
    alice = provider_client(p, provider.address, "alice")
    good = alice.upload(make_artifact(root / "good", p.keys["alice"]), "titanic")
    yield {"root": root, "p": p, "provider": provider, "party": provider.servicer.party, "client": client, "alice": alice, "good": good,
           "orch": client_pb2_grpc.ClientServiceStub(ch)}
    alice.close()
    ch.close()
    client.stop()
    provider.stop()


def refused(call, status: grpc.StatusCode, code: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as ei:
        call()
    assert (ei.value.code(), error_code(ei.value)) == (status, code), ei.value.details()
    return ei.value


def _signed_header(world, tar: bytes, **fields) -> provider_pb2.UploadHeader:
    fields = {"upload_id": secrets.token_urlsafe(24), "dataset_id": "titanic", "artifact_name": "expert", "total_bytes": len(tar),
              "artifact_sha256": hashlib.sha256(tar).hexdigest(), **fields}
    h = provider_pb2.UploadHeader(**fields)
    h.auth.CopyFrom(common_pb2.RequestSignature(**sign_request(world["p"].keys["alice"], "alice", UPLOAD_METHOD, upload_body(h)).to_proto_kwargs()))
    return h


def _stream(h: provider_pb2.UploadHeader, tar: bytes):
    yield provider_pb2.UploadRequest(header=h)
    for off in range(0, len(tar), 64 * 1024):
        data = tar[off:off + 64 * 1024]
        yield provider_pb2.UploadRequest(chunk=provider_pb2.UploadChunk(offset=off, data=data, sha256=hashlib.sha256(data).hexdigest()))


def _replaced(tar: bytes, name: str, data: bytes) -> bytes:
    """The artifact's tar with one member's bytes replaced (the attacker's tar: nothing re-signed)."""
    raw = tarfile.open(fileobj=io.BytesIO(tar), mode="r:")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as t:
        for m in raw.getmembers():
            body = data if m.name == name else raw.extractfile(m).read()
            m.size = len(body)
            t.addfile(m, io.BytesIO(body))
    return out.getvalue()


# --- server threads -----------------------------------------------------------------------------------------------

def _silent(release: threading.Event):
    """A request stream that sends nothing until released (not even the header)."""
    release.wait(30)
    return
    yield  # unreachable: makes this a generator


def test_streams_that_never_send_a_header_cannot_hold_every_server_thread(world):
    """Alice's silent streams used to hold all 16 threads: every other client's call, and health, waited for her."""
    p, address, release = world["p"], world["provider"].address, threading.Event()
    bob, mallory = provider_client(p, address, "bob"), provider_client(p, address, "mallory")
    try:
        held = [world["alice"].stub.UploadExpert.future(_silent(release), timeout=30) for _ in range(2)]
        deadline = time.monotonic() + 5
        while world["provider"].servicer.streams.held("alice") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        refused(lambda: world["alice"].stub.UploadExpert(_silent(release), timeout=10), grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
        third = bob.stub.UploadExpert.future(_silent(release), timeout=30)   # the third stream in all: the provider's limit
        while world["provider"].servicer.streams.held() < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        err = refused(lambda: mallory.stub.UploadExpert(_silent(release), timeout=10), grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
        assert "max_workers - reserved_workers" in err.details()
        t = time.monotonic()
        assert mallory.hello().client_id == "mallory" and time.monotonic() - t < 3   # short calls still find a thread
        for f in [*held, third]:   # no header within upload_header_timeout_s: each stream is cancelled, its place freed
            with pytest.raises(grpc.RpcError) as ei:
                f.result(timeout=10)
            assert ei.value.code() == grpc.StatusCode.CANCELLED
        deadline = time.monotonic() + 5   # the handlers end just after their callers hear of the cancel
        while world["provider"].servicer.streams.held() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert world["provider"].servicer.streams.held() == 0
    finally:
        release.set()
        bob.close()
        mallory.close()


def test_stream_slots_count_per_client_and_in_all_and_give_places_back():
    slots = StreamSlots(total=3, per_client=2)
    with slots.hold("a", "WatchJob"), slots.hold("a", "WatchJob"):
        with pytest.raises(Exception) as ei:
            with slots.hold("a", "WatchJob"):
                pass
        assert getattr(ei.value, "code", None) == "TOO_MANY_STREAMS" and "max_streams_per_client" in str(ei.value)
        with slots.hold("b", "UploadExpert"):
            with pytest.raises(Exception) as ei:
                with slots.hold("c", "UploadExpert"):
                    pass
            assert "max_workers - reserved_workers" in str(ei.value)
        assert slots.held() == 2
    assert slots.held() == 0 and slots.held("a") == 0


def test_a_config_that_leaves_no_thread_for_short_calls_is_refused():
    from protocol.toml_config import ConfigError

    with pytest.raises(ConfigError, match="reserved_workers .4. must be below max_workers .4."):
        ProviderLimits.from_dict({"max_workers": 4})


# --- Ask -------------------------------------------------------------------------------------------------------------

def test_a_question_within_the_characters_but_over_the_tokens_is_refused(world):
    """Letters outside the tokenizer's common set cost several tokens each: 4000 of them were 12,000 tokens and held the
    single pass thread for minutes (its attention grows with the square of the length)."""
    before = world["party"].ledger.count()
    short_in_chars = "𝔘" * 100   # 100 characters, some 300 tokens
    err = refused(lambda: world["alice"].stub.Ask(provider_pb2.AskRequest(questions=[short_in_chars]), timeout=60),
                  grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST")
    assert "tokens of the base LLM; the limit is 64 (max_question_tokens)" in err.details()
    assert world["alice"].hello().limits.max_question_tokens == 64
    assert world["party"].ledger.count() == before


# --- the client's service --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("job_id", ["../../outside/escape", "/tmp/llamdex-abs-escape", "a/b/c", "x\x00y", "j" * 5000, "", "..", "ok\n"])
def test_a_delivered_job_result_whose_id_is_not_a_job_id_is_refused_and_writes_nothing(world, job_id):
    """The id named the result's file: `../../x` and absolute ids wrote outside the workspace; others were INTERNAL."""
    jobs = Path(world["client"].party.workspace) / "jobs"
    before = sorted(p.name for p in jobs.iterdir()) if jobs.exists() else []
    res = common_pb2.JobResult(job_id=job_id, client_id="alice")
    refused(lambda: world["orch"].DeliverJobResult(client_pb2.DeliverJobResultRequest(result=res), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST")
    assert (sorted(p.name for p in jobs.iterdir()) if jobs.exists() else []) == before
    assert not (world["root"] / "outside").exists() and not Path("/tmp/llamdex-abs-escape.delivered.json").exists()


@pytest.mark.parametrize("request_, what", [(client_pb2.EvaluateRequest(max_questions=-5), "max_questions"),
                                            (client_pb2.EvaluateRequest(batch_size=-1), "batch_size"),
                                            (client_pb2.TrainExpertRequest(dataset_id="titanic", max_epsilon=1.0, epochs=-3), "epochs"),
                                            (client_pb2.TrainExpertRequest(dataset_id="titanic", max_epsilon=1.0, seed=-1), "seed")])
def test_negative_counts_and_seeds_are_bad_requests_before_any_work(world, request_, what):
    """`max_questions=-5` meant "all but the last five"; the others were INTERNAL after work had started."""
    call = world["orch"].Evaluate if isinstance(request_, client_pb2.EvaluateRequest) else world["orch"].TrainExpert
    err = refused(lambda: call(request_, timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST")
    assert f"{what} must be 0 or more" in err.details()


def test_a_refusal_from_the_other_party_is_passed_on_with_its_status_and_code(world):
    """The client's service re-raised the provider's refusal, which gRPC sends as UNKNOWN with the refusal's debug
    string (or INTERNAL from a stream), and without the code."""
    with pytest.raises(grpc.RpcError) as ei:
        world["alice"].stub.Ask(provider_pb2.AskRequest(questions=[]), timeout=10)
    downstream = ei.value

    class Context:   # records what the handler ends the call with (the gRPC server's context is not what is tested)
        metadata, aborted = None, None

        def set_trailing_metadata(self, md):
            self.metadata = md

        def abort(self, status, details):
            self.aborted = (status, details)
            raise RuntimeError("aborted")

    @guard
    def handler(self, request, context):
        raise downstream

    ctx = Context()
    with pytest.raises(RuntimeError, match="aborted"):
        handler(None, None, ctx)
    assert ctx.aborted[0] == grpc.StatusCode.INVALID_ARGUMENT and ctx.metadata == (("llamdex-error-code", "BAD_REQUEST"),)
    assert "Ask takes 1.." in ctx.aborted[1] and "debug_error_string" not in ctx.aborted[1]


def test_a_receipt_nested_past_the_parser_is_a_bad_receipt(world):
    deep = "[" * 100_000 + "]" * 100_000
    refused(lambda: world["orch"].DeliverReceipt(client_pb2.DeliverReceiptRequest(receipt=common_pb2.Receipt(envelope_json=deep)), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT, "BAD_RECEIPT")


# --- uploads ------------------------------------------------------------------------------------------------------------

def test_an_artifact_refusal_names_the_upload_not_the_providers_folders_and_fails_the_upload(world, tmp_path):
    tar = pack_artifact(make_artifact(tmp_path / "a", world["p"].keys["alice"], seed=31))
    bad = _replaced(tar, TENSORS_FILE, _flip_last_byte(_member(tar, TENSORS_FILE)))
    h = _signed_header(world, bad)
    err = refused(lambda: world["alice"].stub.UploadExpert(_stream(h, bad), timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "DIGEST_MISMATCH")
    state = str(world["party"].config.state)
    assert "artifact expert:" in err.details() and state not in err.details() and "/tmp/" not in err.details().split("sha256")[0]
    status = world["alice"].stub.GetUploadStatus(provider_pb2.GetUploadStatusRequest(upload_id=h.upload_id), timeout=10)
    assert status.state == "failed" and status.error.count("[DIGEST_MISMATCH]") == 1 and state not in status.error


def _member(tar: bytes, name: str) -> bytes:
    return tarfile.open(fileobj=io.BytesIO(tar), mode="r:").extractfile(name).read()


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def test_a_signature_bundle_nested_past_the_parser_fails_the_upload_as_a_bad_bundle(world, tmp_path):
    """It was INTERNAL (RecursionError), and the upload stayed `receiving`, its bytes kept for a day and verified again
    (INTERNAL again) at every resume."""
    before = world["party"].ledger.count()
    tar = pack_artifact(make_artifact(tmp_path / "a", world["p"].keys["alice"], seed=32))
    bad = _replaced(tar, SIGNATURE_FILE, b"[" * 200_000 + b"]" * 200_000)
    h = _signed_header(world, bad)
    err = refused(lambda: world["alice"].stub.UploadExpert(_stream(h, bad), timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "BAD_BUNDLE")
    assert "nested deeper than" in err.details()
    status = world["alice"].stub.GetUploadStatus(provider_pb2.GetUploadStatusRequest(upload_id=h.upload_id), timeout=10)
    assert status.state == "failed" and world["party"].ledger.count() == before


@pytest.mark.parametrize("field, value", [("dataset_id", "titanic\n"), ("upload_id", secrets.token_urlsafe(24) + "\n"),
                                          ("artifact_sha256", "ab" * 32 + "\n")])
def test_a_name_or_digest_with_a_trailing_newline_is_a_bad_request(world, tmp_path, field, value):
    """`^...$` matched before a final newline: `titanic\\n` got its own budget, ledger row and receipt."""
    before = world["party"].ledger.count()
    tar = pack_artifact(make_artifact(tmp_path / "a", world["p"].keys["alice"], seed=33))
    h = _signed_header(world, tar, **{field: value})
    refused(lambda: world["alice"].stub.UploadExpert(_stream(h, tar), timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST")
    assert world["party"].ledger.count() == before


# --- lookups --------------------------------------------------------------------------------------------------------------

def test_a_page_token_past_sqlites_integers_is_a_bad_page_token(world):
    import base64

    token = base64.urlsafe_b64encode(json.dumps({"after": 2**63, "client": "alice"}).encode()).decode()
    refused(lambda: world["alice"].stub.GetLedger(provider_pb2.GetLedgerRequest(page_size=10, page_token=token), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT, "BAD_PAGE_TOKEN")


def test_a_huge_id_is_refused_with_its_status_and_code_not_a_bare_metadata_error(world):
    """The refusal echoed the whole input: past gRPC's 16 KiB metadata limit the caller got RESOURCE_EXHAUSTED, no code."""
    huge = "j" * 100_000
    stub = world["alice"].stub
    refused(lambda: list(stub.WatchJob(provider_pb2.WatchJobRequest(job_id=huge), timeout=10)), grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    refused(lambda: stub.GetUploadStatus(provider_pb2.GetUploadStatusRequest(upload_id=huge), timeout=10), grpc.StatusCode.NOT_FOUND,
            "UPLOAD_NOT_FOUND")
    err = refused(lambda: stub.Ask(provider_pb2.AskRequest(questions=["x"], artifact_digest=huge), timeout=30), grpc.StatusCode.NOT_FOUND,
                  "EXPERT_NOT_FOUND")
    assert len(err.details()) < 3000


def test_an_expert_is_named_by_its_digest_in_one_form_only(world):
    """Customize and Ask took `md5:<hex>`, `../../bob:<hex>` or the bare hex as the caller's expert; Forget did not."""
    hex_ = world["good"].artifact_digest.split(":", 1)[1]
    for other in (hex_, f"md5:{hex_}", f"../../bob:{hex_}"):
        refused(lambda: world["alice"].stub.Customize(provider_pb2.CustomizeRequest(artifact_digest=other), timeout=10),
                grpc.StatusCode.NOT_FOUND, "EXPERT_NOT_FOUND")


# --- Forget while the connectors train ----------------------------------------------------------------------------------

def test_connectors_that_finish_after_their_last_expert_was_forgotten_are_deleted(world, tmp_path, monkeypatch):
    """Forget found no connectors yet (they were training) and deleted only the expert; the job then stored connectors
    that no live expert used, and Hello listed their schema as ready. The training is replaced here by a stand-in that
    forgets the expert mid-way and writes the connectors' folder: what is tested is what the job does afterwards."""
    party, p = world["party"], world["p"]
    bob = next(c for c in party.config.clients if c.client_id == "bob")
    from tests._grpc_fixtures import titanic_schema
    from protocol.schema import PublicSchema

    schema = PublicSchema.from_json(json.dumps({**json.loads(titanic_schema().to_json()), "description": "forget-race"}))
    with provider_client(p, world["provider"].address, "bob") as pc:
        up = pc.upload(make_artifact(tmp_path / "b", p.keys["bob"], schema=schema), "titanic")
    store = party.connectors

    def training_during_which_the_expert_is_forgotten(base, schema_, preset, **kw):
        party.forget(bob, up.artifact_digest)
        folder = store.path_for(party.base_model_id(), schema_.digest)
        folder.mkdir(parents=True)
        (folder / "connectors.safetensors").write_bytes(b"stand-in")
        return object(), True

    monkeypatch.setattr(store, "get_or_train", training_during_which_the_expert_is_forgotten)
    monkeypatch.setattr(party, "ensure_base", lambda: None)
    result = party.customize(bob, up.artifact_digest)
    deadline = time.monotonic() + 30
    while result.job.state not in ("SUCCEEDED", "FAILED") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert result.job.state == "FAILED" and "forgotten while its connectors trained" in result.job.error
    assert not store.path_for(party.base_model_id(), schema.digest).exists()
    assert schema.digest not in party.schemas_ready()
