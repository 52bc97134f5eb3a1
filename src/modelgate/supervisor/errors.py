"""The supervisor's errors: subclasses of ``errors.SupervisorError``.

Foreign exceptions (``OSError`` from exec, ``docker.errors.*``) are translated
into these where they enter: ``process.py`` and ``containers.py``.
"""

from __future__ import annotations

from modelgate.errors import SupervisorError


class LaunchFailed(SupervisorError):
    """A process could not be executed, or a container could not be created/started."""

    default_code = "launch_failed"


class DockerUnavailable(SupervisorError):
    """The Docker Engine API (or Podman's) did not answer at ``supervisor.docker_host``."""

    default_code = "docker_unavailable"


class ContainerApiError(SupervisorError):
    """The Docker Engine API answered with an error."""

    default_code = "container_api_error"


class ContainerNotFound(ContainerApiError):
    default_code = "container_not_found"


class ImageNotFound(LaunchFailed):
    default_code = "image_not_found"


class VolumeError(SupervisorError):
    """The storage layer could not open or close a model's LUKS volume for a container."""

    default_code = "volume_error"


class InstanceTaken(SupervisorError):
    """Another live gateway supervises under the same instance name (it holds its lock)."""

    default_code = "instance_taken"
