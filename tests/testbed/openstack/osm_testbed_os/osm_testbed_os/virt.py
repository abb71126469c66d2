"""Nova virt driver for the test bed: nova's FakeDriver that also plays the hypervisor for
the server standing for the conversion host (metadata osm_testbed_role=conversion-host).
Based on FakeDriverWithoutFakeNodes: a stable node uuid (state_path/compute_id), so
nova-compute restarts cleanly on the same database.

Volumes attached to that server get a loop device and a /dev/disk/by-id/virtio-* link
(see hypervisor.py), or, when its metadata also has osm_testbed_qmp=<socket>, are
hot-plugged into that qemu guest (qmp.py: the twin image test); other servers (the migrated VMs) get nothing, as before. Boot from
volume is untouched (spawn, not attach_volume). Select with
    [DEFAULT] compute_driver = osm_testbed.ConversionHostDriver
(deps.sh puts the alias nova/virt/osm_testbed.py into the venv: nova 34 loads drivers
from the nova.virt namespace only)

Spawn failures on demand: while $OSM_TESTBED_STATE/openstack/fail-spawn/<server name>
holds a number N > 0, the next spawn of a server of that name fails (Nova sets it to ERROR
with the fault "Build of instance <uuid> aborted: osm test bed: spawn failure injected
...") and N goes down by one; the file is removed at 0.
"""
import os
import re

from oslo_log import log as logging

from nova import context as nova_context
from nova import exception
from nova import objects
from nova.compute import power_state
from nova.compute import vm_states
from nova.virt import fake
from nova.virt import hardware
from nova.volume import cinder

from osm_testbed_os import hypervisor
from osm_testbed_os import qmp

LOG = logging.getLogger(__name__)
ROLE_KEY = "osm_testbed_role"
ROLE = "conversion-host"
FAIL_SPAWN_DIR = os.path.join(os.environ.get("OSM_TESTBED_STATE", "/var/tmp/osm-testbed"),
                              "openstack", "fail-spawn")


def _take_spawn_failure(name):
    """True (and one failure fewer left) when fail-spawn/<name> asks for one."""
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", name or "") or name.startswith("."):
        return False
    path = os.path.join(FAIL_SPAWN_DIR, name)
    try:
        with open(path) as f:
            left = int(f.read().strip() or "0")
    except (OSError, ValueError):
        return False
    if left <= 1:
        os.remove(path)
    else:
        with open(path, "w") as f:
            f.write("%d\n" % (left - 1))
    return left > 0


def _volume_id(connection_info):
    return connection_info.get("serial") or (connection_info.get("data") or {}).get("volume_id")


class ConversionHostDriver(fake.FakeDriverWithoutFakeNodes):

    @staticmethod
    def _is_conversion_host(instance):
        try:
            return (instance.metadata or {}).get(ROLE_KEY) == ROLE
        except Exception:  # metadata not loadable: treat as an ordinary server
            LOG.exception("osm testbed: cannot read metadata of %s", instance.uuid)
            return False

    @staticmethod
    def _qmp_socket(instance):
        """The QMP socket of a conversion host that is a real qemu guest, else None."""
        return (instance.metadata or {}).get(qmp.QMP_KEY)

    def init_host(self, host):
        super().init_host(host)
        # After a restart of the bed the attachments are still in the database but the
        # loop devices are gone: bring them back for the conversion host.
        try:
            ctx = nova_context.get_admin_context()
            for inst in objects.InstanceList.get_by_host(ctx, host, expected_attrs=["metadata"]):
                if not self._is_conversion_host(inst) or self._qmp_socket(inst):
                    continue  # a qemu guest's devices are its own business
                for bdm in objects.BlockDeviceMappingList.get_by_instance_uuid(ctx, inst.uuid):
                    if bdm.is_volume and bdm.volume_id and bdm.boot_index in (None, -1):
                        hypervisor.attach(bdm.volume_id, bdm.volume_size or
                                          cinder.API().get(ctx, bdm.volume_id)["size"])
        except Exception:
            LOG.exception("osm testbed: restoring conversion-host volumes failed")

    def spawn(self, context, instance, image_meta, injected_files, admin_password,
              allocations, network_info=None, block_device_info=None, power_on=True,
              accel_info=None):
        if _take_spawn_failure(instance.display_name):
            LOG.info("osm testbed: failing the spawn of %s as %s asks",
                     instance.display_name, FAIL_SPAWN_DIR)
            # BuildAbortException: ERROR at once, no reschedule (whose fault would only
            # say "Exceeded maximum number of retries").
            raise exception.BuildAbortException(
                instance_uuid=instance.uuid,
                reason="osm test bed: spawn failure injected by fail-spawn/%s" % instance.display_name)
        super().spawn(context, instance, image_meta, injected_files, admin_password,
                      allocations, network_info=network_info,
                      block_device_info=block_device_info, power_on=power_on,
                      accel_info=accel_info)

    def default_root_device_name(self, instance, image_meta, root_bdm):
        # virtio names like libvirt/KVM (/dev/vda, attached volumes /dev/vdb, ...)
        return "/dev/vda"

    def get_info(self, instance, use_cache=True):
        try:
            return super().get_info(instance, use_cache)
        except Exception:
            # The fake driver forgets its servers when nova-compute restarts; keep the
            # ones the database says are running alive instead of reporting them gone.
            if instance.vm_state == vm_states.ACTIVE:
                return hardware.InstanceInfo(state=power_state.RUNNING)
            raise

    def attach_volume(self, context, connection_info, instance, mountpoint,
                      disk_bus=None, device_type=None, encryption=None):
        super().attach_volume(context, connection_info, instance, mountpoint,
                              disk_bus=disk_bus, device_type=device_type, encryption=encryption)
        if self._is_conversion_host(instance):
            vol_id = _volume_id(connection_info)
            size = cinder.API().get(context, vol_id)["size"]
            if self._qmp_socket(instance):
                qmp.attach(self._qmp_socket(instance), vol_id, size)
            else:
                hypervisor.attach(vol_id, size)

    def detach_volume(self, context, connection_info, instance, mountpoint, encryption=None):
        if self._is_conversion_host(instance) and self._qmp_socket(instance):
            qmp.detach(self._qmp_socket(instance), _volume_id(connection_info))
        elif self._is_conversion_host(instance):
            hypervisor.detach(_volume_id(connection_info))
        super().detach_volume(context, connection_info, instance, mountpoint,
                              encryption=encryption)

    def extend_volume(self, context, connection_info, instance, requested_size):
        super().extend_volume(context, connection_info, instance, requested_size)
        if self._is_conversion_host(instance) and not self._qmp_socket(instance):
            vol_id = _volume_id(connection_info)
            if hypervisor.loops_of(hypervisor.backing_file(vol_id)):
                hypervisor.attach(vol_id, -(-requested_size // hypervisor.GiB))
