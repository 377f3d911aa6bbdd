//! The parts of nightshift's command-line tool that its integration tests share with it:
//! a network namespace with a tap ([`netns`]) and the host's side of the test guest's
//! network services ([`guest_net`]), used by `nightshift bench`'s network scenarios and by
//! the network tests alike (one implementation, not two).

pub mod guest_net;
pub mod netns;
