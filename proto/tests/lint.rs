//! The public contract passes `buf lint` with buf's standard rules (the few exceptions
//! are marked in the files, each with its reason).

use std::path::Path;
use std::process::Command;

#[test]
fn the_protos_pass_buf_lint_with_the_standard_rules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("buf")
        .arg("lint")
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "could not run `buf` ({error}); install the test tools with \
                 `python3 -m pip install -r .ci/requirements.txt`"
            )
        });
    assert!(
        output.status.success(),
        "buf lint found problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let config = std::fs::read_to_string(dir.join("buf.yaml")).unwrap();
    assert!(
        config.contains("STANDARD"),
        "buf.yaml must lint with the standard rules"
    );
}
