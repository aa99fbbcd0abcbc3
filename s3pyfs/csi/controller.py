"""CSI Controller service: CreateVolume, DeleteVolume, ValidateVolumeCapabilities.

Responsibility: the S3 side of dynamic provisioning, with botocore's synchronous client
(the driver is a plain threaded gRPC server; no trio here, and the mount's own S3 client
is never used).
  * parameter `bucket` given: the volume is the prefix `NAME/` of that existing bucket
    (id `BUCKET/NAME`), made visible by a directory marker `NAME/`; its name and `options`
    are recorded in `.s3pyfs-csi/volumes/NAME` beside the volumes (outside every volume's
    prefix, so no mount shows it; directory markers keep no metadata on every store);
  * no `bucket`: a new bucket named from the volume name (id `BUCKET`), tagged
    `s3pyfs-csi-volume=<name>` and `s3pyfs-csi-options=<hash of options>` (tag values may not
    hold ',') where the store keeps bucket tags.
Invariants: CreateVolume is idempotent for the same name and parameters and answers
ALREADY_EXISTS when the name exists with other parameters, or when a bucket of that name
exists that this driver did not make; DeleteVolume of an unknown or already deleted id is
OK, and it never deletes a bucket that carries another volume's tag.  S3 errors become gRPC
codes by their S3 error code only (no request detail, no secret in any message).
"""

from __future__ import annotations

import hashlib
import json
import logging

import grpc

from . import csi_pb2 as pb
from . import csi_pb2_grpc as pbg
from .volumes import (
    CsiError,
    Secrets,
    VolumeId,
    bucket_for_volume,
    check_capability,
    check_parameters,
    invalid,
    parse_secrets,
    parse_volume_id,
    prefix_for_volume,
)

log = logging.getLogger("s3pyfs.csi")

RECORDS = ".s3pyfs-csi/volumes/"            # shared bucket: KEY NAME holds {"name", "options"}
VOLUME_TAG, OPTIONS_TAG = "s3pyfs-csi-volume", "s3pyfs-csi-options"
AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
              "AuthorizationHeaderMalformed", "InvalidSecurity"}
NO_TAGS = {"NotImplemented", "MethodNotAllowed", "NoSuchTagSet", "NoSuchTagSetError", "InvalidRequest"}


def s3_client(secrets: Secrets, path_style: bool | None = None):
    import botocore.session
    from botocore.config import Config
    path = secrets.plain_http if path_style is None else path_style
    session = botocore.session.get_session()
    session.set_config_variable("credentials_file", "/dev/null")
    session.set_config_variable("config_file", "/dev/null")
    return session.create_client(
        "s3", endpoint_url=secrets.endpoint, region_name=secrets.region or "us-east-1",
        aws_access_key_id=secrets.access_key, aws_secret_access_key=secrets.secret_key,
        config=Config(s3={"addressing_style": "path" if path else "auto"}, connect_timeout=5, read_timeout=30,
                      retries={"total_max_attempts": 3, "mode": "standard"}))


def s3_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "") or ""


def s3_error(exc: Exception, what: str) -> CsiError:
    """A gRPC error for an S3 failure: the S3 error code only, never the request."""
    import botocore.exceptions as bex
    code = s3_code(exc)
    if code in AUTH_CODES:
        return CsiError(grpc.StatusCode.UNAUTHENTICATED, f"{what}: the store refused the secrets' keys ({code})")
    if code in ("AccessDenied", "AllAccessDisabled"):
        return CsiError(grpc.StatusCode.PERMISSION_DENIED, f"{what}: access denied by the store ({code})")
    if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError)):
        return CsiError(grpc.StatusCode.UNAVAILABLE, f"{what}: the endpoint cannot be reached")
    return CsiError(grpc.StatusCode.INTERNAL, f"{what}: S3 error {code or type(exc).__name__}")


def options_tag(options: str) -> str:
    return hashlib.sha256(options.encode()).hexdigest()[:32]


def _path_style(parameters) -> bool | None:
    value = parameters.get("pathStyle")
    return None if value is None else value == "true"


class Controller(pbg.ControllerServicer):

    # ------------------------------------------------------------------ CreateVolume
    def CreateVolume(self, request, context):
        if not request.name:
            raise invalid("name is missing")
        if not request.volume_capabilities:
            raise invalid("volume_capabilities is missing")
        for cap in request.volume_capabilities:
            check_capability(cap, "volume_capabilities")
        if request.HasField("volume_content_source"):
            raise invalid("volume_content_source (snapshots, clones) is not supported")
        params = check_parameters(request.parameters)
        secrets = parse_secrets(request.secrets)
        options = params.get("options", "")
        client = s3_client(secrets, _path_style(params))
        if "bucket" in params:
            volume = self._create_prefix(client, params["bucket"], request.name, options)
        else:
            volume = self._create_bucket(client, request.name, options)
        context_out = {"bucket": volume.bucket, "prefix": volume.prefix, "options": options}
        if "pathStyle" in params:
            context_out["pathStyle"] = params["pathStyle"]
        log.info("CreateVolume %s: volume %s", request.name, volume)
        return pb.CreateVolumeResponse(volume=pb.Volume(
            volume_id=str(volume), capacity_bytes=request.capacity_range.required_bytes, volume_context=context_out))

    def _create_prefix(self, client, bucket: str, name: str, options: str) -> VolumeId:
        prefix = prefix_for_volume(name)
        try:
            client.list_objects_v2(Bucket=bucket, MaxKeys=1)      # a GET: its error names the cause (HEAD's cannot)
        except Exception as exc:
            if s3_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                raise invalid(f"parameter bucket: bucket {bucket} does not exist") from None
            raise s3_error(exc, f"bucket {bucket}") from None
        record = {"name": name, "options": options}
        try:
            had = json.loads(client.get_object(Bucket=bucket, Key=RECORDS + prefix)["Body"].read())
        except Exception as exc:
            if s3_code(exc) not in ("404", "NoSuchKey", "NotFound") and not isinstance(exc, ValueError):
                raise s3_error(exc, f"volume {bucket}/{prefix}") from None
        else:
            if had != record:
                raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                               f"volume {name} exists in bucket {bucket} with other options")
            return VolumeId(bucket, prefix)
        try:
            client.put_object(Bucket=bucket, Key=prefix + "/", Body=b"", ContentType="application/x-directory")
            client.put_object(Bucket=bucket, Key=RECORDS + prefix, Body=json.dumps(record).encode(),
                              ContentType="application/json")
        except Exception as exc:
            raise s3_error(exc, f"creating volume {bucket}/{prefix}") from None
        return VolumeId(bucket, prefix)

    def _tags(self, client, bucket: str) -> dict[str, str] | None:
        """The bucket's tags; None when the store keeps no bucket tags."""
        try:
            answer = client.get_bucket_tagging(Bucket=bucket)
        except Exception as exc:
            if s3_code(exc) in NO_TAGS:
                return {} if s3_code(exc).startswith("NoSuchTagSet") else None
            if s3_code(exc) == "NoSuchBucket":
                raise
            raise s3_error(exc, f"bucket {bucket}") from None
        return {t["Key"]: t["Value"] for t in answer.get("TagSet", [])}

    def _create_bucket(self, client, name: str, options: str) -> VolumeId:
        bucket = bucket_for_volume(name)
        created = False
        try:
            client.create_bucket(Bucket=bucket)
            created = True
        except Exception as exc:
            if s3_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise s3_error(exc, f"creating bucket {bucket}") from None
            if s3_code(exc) == "BucketAlreadyExists":
                raise CsiError(grpc.StatusCode.ALREADY_EXISTS, f"bucket {bucket} belongs to someone else") from None
        tags = self._tags(client, bucket)
        if not created and tags is not None:
            if tags.get(VOLUME_TAG) != name:
                if tags or self._has_objects(client, bucket):
                    raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                                   f"bucket {bucket} exists and was not made for volume {name}")
            elif tags.get(OPTIONS_TAG, "") != options_tag(options):
                raise CsiError(grpc.StatusCode.ALREADY_EXISTS, f"volume {name} exists with other options")
            else:
                return VolumeId(bucket)
        if tags is not None:
            try:
                client.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [
                    {"Key": VOLUME_TAG, "Value": name}, {"Key": OPTIONS_TAG, "Value": options_tag(options)}]})
            except Exception as exc:
                if s3_code(exc) not in NO_TAGS:
                    raise s3_error(exc, f"tagging bucket {bucket}") from None
        return VolumeId(bucket)

    @staticmethod
    def _has_objects(client, bucket: str) -> bool:
        return bool(client.list_objects_v2(Bucket=bucket, MaxKeys=1).get("KeyCount"))

    # ------------------------------------------------------------------ DeleteVolume
    def DeleteVolume(self, request, context):
        if not request.volume_id:
            raise invalid("volume_id is missing")
        try:
            volume = parse_volume_id(request.volume_id)
        except CsiError:
            log.info("DeleteVolume %s: not an id of this driver, nothing to delete", request.volume_id)
            return pb.DeleteVolumeResponse()
        client = s3_client(parse_secrets(request.secrets))
        try:
            if volume.prefix:
                count = self._delete_keys(client, volume.bucket, volume.prefix + "/")
                client.delete_object(Bucket=volume.bucket, Key=RECORDS + volume.prefix)
            else:
                tags = self._tags(client, volume.bucket)
                if tags and tags.get(VOLUME_TAG) and bucket_for_volume(tags[VOLUME_TAG]) != volume.bucket:
                    raise CsiError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"bucket {volume.bucket} belongs to another volume; not deleted")
                count = self._delete_keys(client, volume.bucket, "")
                client.delete_bucket(Bucket=volume.bucket)
        except CsiError:
            raise
        except Exception as exc:
            if s3_code(exc) == "NoSuchBucket":
                log.info("DeleteVolume %s: bucket already gone", volume)
                return pb.DeleteVolumeResponse()
            raise s3_error(exc, f"deleting volume {volume}") from None
        log.info("DeleteVolume %s: %d object(s) deleted", volume, count)
        return pb.DeleteVolumeResponse()

    @staticmethod
    def _delete_keys(client, bucket: str, prefix: str) -> int:
        """Every object and unfinished multipart upload under `prefix`; the number of objects."""
        count = 0
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                answer = client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
                if answer.get("Errors"):
                    raise CsiError(grpc.StatusCode.INTERNAL,
                                   f"{len(answer['Errors'])} object(s) of {bucket}/{prefix} could not be deleted "
                                   f"({answer['Errors'][0].get('Code')})")
                count += len(keys)
        return count

    # ------------------------------------------------------------------ the rest
    def ValidateVolumeCapabilities(self, request, context):
        volume = parse_volume_id(request.volume_id)
        if not request.volume_capabilities:
            raise invalid("volume_capabilities is missing")
        if request.secrets:
            self._check_exists(s3_client(parse_secrets(request.secrets)), volume)
        for cap in request.volume_capabilities:
            try:
                check_capability(cap)
            except CsiError as exc:
                return pb.ValidateVolumeCapabilitiesResponse(message=exc.message)
        return pb.ValidateVolumeCapabilitiesResponse(confirmed=pb.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context, volume_capabilities=request.volume_capabilities,
            parameters=request.parameters))

    @staticmethod
    def _check_exists(client, volume: VolumeId) -> None:
        try:
            if volume.prefix:
                found = client.list_objects_v2(Bucket=volume.bucket, Prefix=volume.prefix + "/", MaxKeys=1)
                if not found.get("KeyCount"):
                    raise CsiError(grpc.StatusCode.NOT_FOUND, f"volume {volume} does not exist")
            else:
                client.list_objects_v2(Bucket=volume.bucket, MaxKeys=1)
        except CsiError:
            raise
        except Exception as exc:
            if s3_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                raise CsiError(grpc.StatusCode.NOT_FOUND, f"volume {volume} does not exist") from None
            raise s3_error(exc, f"volume {volume}") from None

    def ControllerGetCapabilities(self, request, context):
        rpc = pb.ControllerServiceCapability.RPC
        return pb.ControllerGetCapabilitiesResponse(capabilities=[
            pb.ControllerServiceCapability(rpc=rpc(type=rpc.CREATE_DELETE_VOLUME))])
