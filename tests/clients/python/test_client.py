"""amisim from Python: the AMI lifecycle through the gateway of `amisim dev`.

Uses only stubs generated from proto/amisim/v1/*.proto (see run.sh) and the metadata keys the
proto files document: x-amisim-region, x-amisim-account, x-amisim-error-code,
x-amisim-consistency-token, x-amisim-request-id; and, against a `dev` started with
`--accounts FILE`, authorization (`Bearer <token>`).
"""

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "gen"))

from amisim.v1 import ec2_pb2 as ec2  # noqa: E402
from amisim.v1 import ec2_pb2_grpc as ec2_grpc  # noqa: E402

AMISIM_BIN = os.environ.get(
    "AMISIM_BIN", os.path.join(HERE, "..", "..", "..", "target", "debug", "amisim")
)
ACCOUNT = "123456789012"
REGION = "eu-west-1"


def md(region=REGION, account=ACCOUNT):
    return [("x-amisim-region", region), ("x-amisim-account", account)]


def error_code(err):
    """The x-amisim-error-code of a failed call (trailers-only answers carry it in trailers)."""
    for key, value in list(err.trailing_metadata() or []) + list(err.initial_metadata() or []):
        if key == "x-amisim-error-code":
            return value
    return None


def wait_for(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Dev:
    """`amisim dev` on a temporary data dir and a free port; stopped with SIGTERM."""

    def __init__(self, extra_args=()):
        self.data = tempfile.TemporaryDirectory(prefix="amisim-py-")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.proc = subprocess.Popen(
            [AMISIM_BIN, "dev", "--data", self.data.name, "--listen", "127.0.0.1:0",
             "--time-scale", "600", *extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.lines = queue.Queue()
        self.stdout = []
        self.stderr = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, True),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, False),
                         daemon=True).start()
        self.address = self._wait_address()

    def _pump(self, stream, keep, to_queue):
        for line in stream:
            keep.append(line.rstrip("\n"))
            if to_queue:
                self.lines.put(line)
        if to_queue:
            self.lines.put(None)

    def _wait_address(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            if "gateway listening on " in line:
                return line.split("gateway listening on ", 1)[1].strip()
        self.proc.kill()
        raise AssertionError("amisim dev printed no gateway address:\n" + self.logs())

    def logs(self):
        return "stdout:\n" + "\n".join(self.stdout) + "\nstderr:\n" + "\n".join(self.stderr)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("amisim dev did not stop on SIGTERM:\n" + self.logs())
        self.data.cleanup()
        assert code == 0, f"amisim dev exited with {code}:\n" + self.logs()


@pytest.fixture(scope="module")
def dev():
    d = Dev()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def stub(dev):
    channel = grpc.insecure_channel(dev.address)
    grpc.channel_ready_future(channel).result(timeout=10)
    yield ec2_grpc.Ec2Stub(channel)
    channel.close()


def register_image(stub, name, meta=None):
    """CreateVolume -> available -> CreateSnapshot -> completed -> RegisterImage."""
    meta = meta or md()
    volume = stub.CreateVolume(
        ec2.CreateVolumeRequest(availability_zone=REGION + "a", size=8, volume_type="gp3"),
        metadata=meta,
    )
    assert volume.volume_id.startswith("vol-")
    wait_for("volume available", lambda: stub.DescribeVolumes(
        ec2.DescribeVolumesRequest(volume_ids=[volume.volume_id]), metadata=meta
    ).volumes[0].state == "available")

    snapshot = stub.CreateSnapshot(
        ec2.CreateSnapshotRequest(volume_id=volume.volume_id, description="root of " + name),
        metadata=meta,
    )
    assert snapshot.snapshot_id.startswith("snap-")
    assert snapshot.state == "pending"
    wait_for("snapshot completed", lambda: stub.DescribeSnapshots(
        ec2.DescribeSnapshotsRequest(snapshot_ids=[snapshot.snapshot_id]), metadata=meta
    ).snapshots[0].state == "completed")

    response, call = stub.RegisterImage.with_call(
        ec2.RegisterImageRequest(
            name=name,
            architecture="x86_64",
            virtualization_type="hvm",
            root_device_name="/dev/xvda",
            block_device_mappings=[ec2.BlockDeviceMapping(
                device_name="/dev/xvda",
                ebs=ec2.EbsBlockDevice(snapshot_id=snapshot.snapshot_id, volume_type="gp3"),
            )],
        ),
        metadata=meta,
    )
    token = dict(call.initial_metadata()).get("x-amisim-consistency-token", "")
    assert token.startswith(REGION + ":"), token
    return response.image_id, snapshot.snapshot_id


def describe_image(stub, image_id, meta=None):
    return stub.DescribeImages(
        ec2.DescribeImagesRequest(image_ids=[image_id]), metadata=meta or md()
    ).images[0]


def test_image_lifecycle(stub):
    image_id, snapshot_id = register_image(stub, "python client image")
    assert image_id.startswith("ami-")

    image = describe_image(stub, image_id)
    assert image.name == "python client image"
    assert image.owner_id == ACCOUNT
    assert image.root_device_type == "ebs"
    assert image.root_device_name == "/dev/xvda"
    assert image.block_device_mappings[0].ebs.snapshot_id == snapshot_id
    wait_for("image available", lambda: describe_image(stub, image_id).state == "available")

    stub.CreateTags(
        ec2.CreateTagsRequest(resources=[image_id], tags=[ec2.Tag(key="team", value="py")]),
        metadata=md(),
    )
    tags = {t.key: t.value for t in describe_image(stub, image_id).tags}
    assert tags == {"team": "py"}

    # Images are regional: us-east-1 does not know it.
    with pytest.raises(grpc.RpcError) as err:
        stub.DescribeImages(ec2.DescribeImagesRequest(image_ids=[image_id]),
                            metadata=md(region="us-east-1"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_code(err.value) == "InvalidAMIID.NotFound"

    result = stub.DeregisterImage(ec2.DeregisterImageRequest(image_id=image_id), metadata=md())
    assert getattr(result, "return")
    # Deregistered images stay visible as `deregistered` for a while (EC2 behaviour).
    images = stub.DescribeImages(
        ec2.DescribeImagesRequest(image_ids=[image_id]), metadata=md()
    ).images
    assert [i.state for i in images] == ["deregistered"]
    # The snapshot is kept.
    snaps = stub.DescribeSnapshots(
        ec2.DescribeSnapshotsRequest(snapshot_ids=[snapshot_id]), metadata=md()
    ).snapshots
    assert [s.state for s in snaps] == ["completed"]


def test_malformed_image_id_has_the_ec2_error_code(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.DescribeImages(ec2.DescribeImagesRequest(image_ids=["ami-bad"]), metadata=md())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(err.value) == "InvalidAMIID.Malformed"
    assert err.value.details().startswith("InvalidAMIID.Malformed: ")


def test_unknown_region_is_rejected_by_the_gateway(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.DescribeImages(ec2.DescribeImagesRequest(), metadata=md(region="xx-1"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(err.value) == "InvalidRegion"
    assert "known regions: ap-south-1, eu-west-1, us-east-1" in err.value.details()


def test_health_service_answers_serving(dev):
    # grpc.health.v1.Health/Check without extra packages: an empty HealthCheckRequest is b"",
    # and HealthCheckResponse{status: SERVING} is field 1 = 1, i.e. b"\x08\x01".
    with grpc.insecure_channel(dev.address) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        assert check(b"", timeout=10) == b"\x08\x01"


GRANTEE = "444455556666"


def test_share_an_image_and_launch_it_as_the_grantee(stub):
    owner, grantee = md(), md(account=GRANTEE)
    image_id, snapshot_id = register_image(stub, "python shared image")
    wait_for("image available", lambda: describe_image(stub, image_id).state == "available")

    # Not shared yet: the grantee neither sees nor launches it.
    with pytest.raises(grpc.RpcError) as err:
        stub.RunInstances(ec2.RunInstancesRequest(image_id=image_id, min_count=1, max_count=1),
                          metadata=grantee)
    assert error_code(err.value) == "InvalidAMIID.NotFound"

    stub.ModifyImageAttribute(ec2.ModifyImageAttributeRequest(
        image_id=image_id,
        launch_permission=ec2.LaunchPermissionModifications(
            add=[ec2.LaunchPermission(user_id=GRANTEE)]),
    ), metadata=owner)
    attr = stub.DescribeImageAttribute(ec2.DescribeImageAttributeRequest(
        image_id=image_id, attribute="launchPermission"), metadata=owner)
    assert [p.user_id for p in attr.launch_permissions] == [GRANTEE]

    # The grantee sees it as shared with it (no tags of the owner) and launches it, without
    # access to its snapshot (sharing an AMI does not share its snapshots).
    shared = stub.DescribeImages(ec2.DescribeImagesRequest(executable_users=["self"]),
                                 metadata=grantee).images
    assert [i.image_id for i in shared] == [image_id]
    reservation = stub.RunInstances(
        ec2.RunInstancesRequest(image_id=image_id, min_count=1, max_count=1), metadata=grantee)
    assert reservation.owner_id == GRANTEE
    assert reservation.instances[0].image_id == image_id
    assert not stub.DescribeSnapshots(ec2.DescribeSnapshotsRequest(), metadata=grantee).snapshots

    # The grantee cannot change or deregister it (AuthFailure); the owner can take it back.
    with pytest.raises(grpc.RpcError) as err:
        stub.DeregisterImage(ec2.DeregisterImageRequest(image_id=image_id), metadata=grantee)
    assert error_code(err.value) == "AuthFailure"
    stub.ResetImageAttribute(ec2.ResetImageAttributeRequest(
        image_id=image_id, attribute="launchPermission"), metadata=owner)
    with pytest.raises(grpc.RpcError) as err:
        stub.RunInstances(ec2.RunInstancesRequest(image_id=image_id, min_count=1, max_count=1),
                          metadata=grantee)
    assert error_code(err.value) == "InvalidAMIID.NotFound"


ACCOUNTS_TOML = """
[operator]
token = "py-operator-token"

[[organization]]
id = "o-abcde12345"
management_account = "999988887777"

[[account]]
id = "123456789012"
token = "py-owner-token"

[[account]]
id = "222233334444"
token = "py-member-token"
organization = "o-abcde12345"
"""


@pytest.fixture(scope="module")
def secured():
    """A second `amisim dev`, started with an accounts file (bearer tokens, an organization)."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(ACCOUNTS_TOML)
    d = Dev(extra_args=("--accounts", f.name))
    channel = grpc.insecure_channel(d.address)
    grpc.channel_ready_future(channel).result(timeout=10)
    yield ec2_grpc.Ec2Stub(channel)
    channel.close()
    d.stop()
    os.unlink(f.name)


def bearer(token, region=REGION):
    return [("x-amisim-region", region), ("authorization", "Bearer " + token)]


def test_bearer_tokens_and_an_organization_share(secured):
    stub = secured
    # Without a token, or with x-amisim-account only: AuthFailure.
    for meta in ([("x-amisim-region", REGION)], md()):
        with pytest.raises(grpc.RpcError) as err:
            stub.DescribeImages(ec2.DescribeImagesRequest(), metadata=meta)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_code(err.value) == "AuthFailure"

    owner, member = bearer("py-owner-token"), bearer("py-member-token")
    image_id, _ = register_image(stub, "python org image", meta=owner)
    wait_for("image available",
             lambda: describe_image(stub, image_id, meta=owner).state == "available")
    stub.ModifyImageAttribute(ec2.ModifyImageAttributeRequest(
        image_id=image_id,
        attribute="launchPermission",
        operation_type="add",
        organization_arns=["arn:aws:organizations::999988887777:organization/o-abcde12345"],
    ), metadata=owner)
    reservation = stub.RunInstances(
        ec2.RunInstancesRequest(image_id=image_id, min_count=1, max_count=1), metadata=member)
    assert reservation.owner_id == "222233334444"
