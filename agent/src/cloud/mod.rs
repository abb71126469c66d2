//! Clients of the clouds on both sides: vCenter (vim25 SOAP) and OpenStack.
pub mod openstack;
pub mod vsphere;
