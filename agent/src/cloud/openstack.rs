//! OpenStack: Keystone auth and the Cinder/Nova/Neutron/Glance calls osm needs (issue 5).
