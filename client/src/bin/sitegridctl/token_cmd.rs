//! `sitegridctl token`: bearer tokens and the hashes the nodes keep of them.

use std::io::{Read as _, Write};

use sha2::{Digest as _, Sha256};

use crate::args::TokenCommand;
use crate::error::CliError;

/// Random bytes in a token: 256 bits, beyond guessing.
const TOKEN_BYTES: usize = 32;

pub(crate) fn run(command: TokenCommand, out: &mut impl Write) -> Result<(), CliError> {
    match command {
        TokenCommand::New => {
            let mut secret = [0u8; TOKEN_BYTES];
            getrandom::fill(&mut secret).map_err(|error| {
                CliError::Usage(format!("the system's random source failed: {error}"))
            })?;
            let token = hex::encode(secret);
            writeln!(out, "token        = {token}")?;
            writeln!(out, "token_sha256 = \"{}\"", sha256(&token))?;
        }
        TokenCommand::Hash => {
            let mut token = String::new();
            std::io::stdin().read_to_string(&mut token)?;
            let token = token.trim();
            if token.is_empty() {
                return Err(CliError::Usage("give the token on stdin".into()));
            }
            writeln!(out, "token_sha256 = \"{}\"", sha256(token))?;
        }
    }
    Ok(())
}

/// What the nodes keep of a token (they hash the token they are sent the same way).
fn sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
