//! Generated code for clusterchat's internal gRPC contracts (`proto/`).
//!
//! **Architecture Invariant:** this crate contains only generated code and the
//! encoded descriptor set of each contract for server reflection. No logic, no hand-written types.

pub mod user {
    pub mod v1 {
        tonic::include_proto!("clusterchat.user.v1");

        /// The encoded `FileDescriptorSet` of this contract alone, for
        /// `tonic-reflection`.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/user.bin"));
    }
}

pub mod offline {
    pub mod v1 {
        tonic::include_proto!("clusterchat.offline.v1");

        /// The encoded `FileDescriptorSet` of this contract alone, for
        /// `tonic-reflection`.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/offline.bin"));
    }
}

pub mod history {
    pub mod v1 {
        tonic::include_proto!("clusterchat.history.v1");

        /// The encoded `FileDescriptorSet` of this contract alone, for
        /// `tonic-reflection`.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/history.bin"));
    }
}
