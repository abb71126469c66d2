"""ML2 mechanism driver that binds every port (vif_type=ovs) without any agent.

The test bed runs no L2 agent, so without this nothing would bind ports and Nova would
fail to boot servers with "binding_failed"."""
from neutron_lib import constants
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api


class BindEverythingDriver(api.MechanismDriver):
    def initialize(self):
        pass

    @property
    def connectivity(self):
        return portbindings.CONNECTIVITY_L2

    def bind_port(self, context):
        for seg in context.segments_to_bind:
            context.set_binding(seg[api.ID], portbindings.VIF_TYPE_OVS,
                                {portbindings.CAP_PORT_FILTER: True,
                                 portbindings.OVS_HYBRID_PLUG: False},
                                status=constants.PORT_STATUS_ACTIVE)
            return
