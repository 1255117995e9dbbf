//! Generated code for clusterchat's internal gRPC contracts (`proto/`).
//!
//! **Architecture Invariant:** this crate contains only generated code and the
//! encoded descriptor set for server reflection. No logic, no hand-written types.

pub mod user {
    pub mod v1 {
        tonic::include_proto!("clusterchat.user.v1");
    }
}

pub mod offline {
    pub mod v1 {
        tonic::include_proto!("clusterchat.offline.v1");
    }
}

pub mod history {
    pub mod v1 {
        tonic::include_proto!("clusterchat.history.v1");
    }
}

/// The encoded `FileDescriptorSet` of every contract, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
