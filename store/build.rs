//! Compiles the etcd v3 wire definitions and Lodestone's peer protocol.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/kv.proto",
        "proto/auth.proto",
        "proto/rpc.proto",
        "proto/lodestone.proto",
        "proto/v3lock.proto",
        "proto/v3election.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Every RPC Lodestone does not serve yet answers Unimplemented instead of failing to
        // compile or hanging.
        .generate_default_stubs(true)
        .bytes(".")
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
