//! vSphere: vim25 SOAP client, discovery, checks, snapshots and CBT (issue 4).
