//! Which Raft messages from the network a node lets into raft-rs.
//!
//! raft-rs trusts its input: a message names its sender in `from`, and a heartbeat's `commit`
//! past the end of the follower's log reaches a `fatal!` (a panic that stops the node). Over the
//! peer port anyone could send either. So a message is stepped only if it is addressed to this
//! node and comes from a member other than itself, and a heartbeat's commit index is clamped to
//! the log this node holds — a real leader never sends more (it sends `min(matched, committed)`),
//! so only a forged or confused one is changed.

use raft::prelude::{Message, MessageType};

/// Why a message was not stepped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("addressed to node {to}, not to this node ({me})")]
    NotForMe { to: u64, me: u64 },
    #[error("from node {0}, which is not a member")]
    NotAMember(u64),
}

/// The message to step, or why it is refused. `is_member` tells the current members.
pub fn admit(mut msg: Message, me: u64, is_member: impl Fn(u64) -> bool, last_index: u64) -> Result<Message, Refused> {
    if msg.to != me {
        return Err(Refused::NotForMe { to: msg.to, me });
    }
    if msg.from == me || !is_member(msg.from) {
        return Err(Refused::NotAMember(msg.from));
    }
    if msg.get_msg_type() == MessageType::MsgHeartbeat && msg.commit > last_index {
        tracing::warn!(
            from = msg.from,
            commit = msg.commit,
            last_index,
            "a heartbeat claims a commit index past this node's log; clamped"
        );
        msg.commit = last_index;
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(from: u64, to: u64, commit: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = from;
        m.to = to;
        m.term = 1_000;
        m.commit = commit;
        m
    }

    #[test]
    fn only_members_reach_raft_and_a_heartbeat_never_commits_past_the_log() {
        let members = |id: u64| (1..=3).contains(&id);
        assert_eq!(admit(heartbeat(9, 1, 5), 1, members, 10), Err(Refused::NotAMember(9)));
        assert_eq!(admit(heartbeat(1, 1, 5), 1, members, 10), Err(Refused::NotAMember(1)), "not from itself");
        assert_eq!(admit(heartbeat(2, 3, 5), 1, members, 10), Err(Refused::NotForMe { to: 3, me: 1 }));
        let clamped = admit(heartbeat(2, 1, 1_000_000), 1, members, 10).expect("a member's heartbeat is stepped");
        assert_eq!(clamped.commit, 10);
        let honest = admit(heartbeat(2, 1, 7), 1, members, 10).expect("stepped");
        assert_eq!(honest.commit, 7);
    }
}
