//! A node's view of its site: the members, what each is doing, and who is a key's
//! primary.

use std::sync::Arc;

use bytes::Bytes;
use sitegrid_proto::routing;

/// What a member is doing, as it says in gossip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Copying what it lacks from a ready member; it takes replicated writes but serves
    /// nothing and is nobody's primary.
    Joining,
    /// Serving; may be a key's primary.
    Ready,
    /// Lost contact with the site (or was found missing writes): it serves nothing until
    /// it has caught up again.
    Isolated,
}

impl MemberState {
    /// The gossip value.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Ready => "ready",
            MemberState::Isolated => "isolated",
        }
    }

    /// Parses a gossip value.
    pub fn parse(value: &str) -> Option<MemberState> {
        match value {
            "joining" => Some(MemberState::Joining),
            "ready" => Some(MemberState::Ready),
            "isolated" => Some(MemberState::Isolated),
            _ => None,
        }
    }
}

/// One member of the site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node name (unique in the site).
    pub name: Arc<str>,
    /// When it started: a restarted node is a new generation.
    pub generation: u64,
    /// How many times this generation caught up and became ready; a suspicion names the
    /// epoch it is about, so it does not outlive the catch-up it causes.
    pub epoch: u64,
    /// gRPC address.
    pub address: String,
    /// What it is doing: `Isolated` while the site suspects it, whatever it says.
    pub state: MemberState,
    /// Whether it says it is ready (it may still serve while a suspicion of it is on its
    /// way to it).
    pub says_ready: bool,
    /// Newest version in its persistent data at start (for choosing who starts a site).
    pub data_version: u64,
    /// Its slot in the site, part of every version it assigns (unique among live members
    /// once it is ready; [`NO_SLOT`] if it does not say).
    pub slot: u8,
}

/// The slot of a member that does not gossip one.
pub const NO_SLOT: u8 = u8::MAX;

impl Member {
    /// Whether it serves and may be a primary.
    pub fn is_ready(&self) -> bool {
        self.state == MemberState::Ready
    }
}

/// The members of the site a node knows to be alive, itself included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// By name.
    pub members: Vec<Member>,
}

impl View {
    /// The member named `name`.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| &*m.name == name)
    }

    /// Names of the ready members.
    pub fn ready(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.is_ready())
    }

    /// The ready member that is `key`'s primary.
    pub fn primary(&self, key: &Bytes) -> Option<&Member> {
        let name = routing::primary(routing::key_hash(key), self.ready().map(|m| &*m.name))?;
        self.member(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, state: MemberState) -> Member {
        Member {
            name: Arc::from(name),
            generation: 1,
            epoch: 0,
            address: format!("127.0.0.1:1{name}"),
            state,
            says_ready: state == MemberState::Ready,
            data_version: 0,
            slot: 0,
        }
    }

    #[test]
    fn only_ready_members_are_primaries() {
        let view = View {
            members: vec![
                member("n1", MemberState::Ready),
                member("n2", MemberState::Joining),
                member("n3", MemberState::Isolated),
            ],
        };
        for i in 0..100 {
            let key = Bytes::from(format!("k{i}"));
            assert_eq!(&*view.primary(&key).unwrap().name, "n1");
        }
        assert!(View::default().primary(&Bytes::from_static(b"k")).is_none());
    }

    #[test]
    fn states_round_trip_through_gossip_values() {
        for state in [
            MemberState::Joining,
            MemberState::Ready,
            MemberState::Isolated,
        ] {
            assert_eq!(MemberState::parse(state.as_str()), Some(state));
        }
        assert_eq!(MemberState::parse("leaving"), None);
    }
}
