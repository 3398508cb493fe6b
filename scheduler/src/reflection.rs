//! gRPC server reflection, in both dialects clients speak: `grpc.reflection.v1` (grpcurl, current
//! grpc-go/grpc-java) and `grpc.reflection.v1alpha` (Python's `grpcio-reflection`, older tools),
//! which would otherwise get `UNIMPLEMENTED` and could not discover `kiln.v1`.
//!
//! Both are built from the one descriptor set `kiln-proto` compiles, so they cannot disagree.

use tonic_reflection::server::v1::{ServerReflection as V1, ServerReflectionServer as V1Server};
use tonic_reflection::server::v1alpha::{ServerReflection as V1Alpha, ServerReflectionServer as V1AlphaServer};

use crate::Error;

fn builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(kiln_proto::FILE_DESCRIPTOR_SET)
}

/// The `v1` and `v1alpha` reflection services, to add to the gRPC server side by side.
pub(crate) fn services() -> Result<(V1Server<impl V1>, V1AlphaServer<impl V1Alpha>), Error> {
    let v1 = builder().build_v1().map_err(|e| Error::Reflection(e.to_string()))?;
    let v1alpha = builder().build_v1alpha().map_err(|e| Error::Reflection(e.to_string()))?;
    Ok((v1, v1alpha))
}
