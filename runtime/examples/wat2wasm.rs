//! `wat2wasm IN.wat OUT.wasm`: turns a text-format fixture into a module the CLI can deploy
//! (the black-box tests deploy the hostile fixtures of `runtime/tests/fixtures/` this way).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        return Err("usage: wat2wasm IN.wat OUT.wasm".into());
    };
    let wasm = wat::parse_file(input)?;
    std::fs::write(output, wasm)?;
    Ok(())
}
