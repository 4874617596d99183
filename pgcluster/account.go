package pgcluster

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// serverAccount is the unprivileged account that initdb and postgres run as
// when this process runs as root.
type serverAccount struct {
	name string
	uid  int
	gid  int
}

// lookupServerAccount returns the account to run initdb and postgres as, or
// nil when this process is not root and they can run as the current user.
// initdb rejects root, so as root it picks the account postgres, or nobody
// when postgres does not exist.
func lookupServerAccount() (*serverAccount, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}

	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}

		uid, err := strconv.Atoi(u.Uid)
		if err != nil {
			return nil, fmt.Errorf("parse uid %q of user %s: %w", u.Uid, name, err)
		}
		gid, err := strconv.Atoi(u.Gid)
		if err != nil {
			return nil, fmt.Errorf("parse gid %q of user %s: %w", u.Gid, name, err)
		}
		return &serverAccount{name: name, uid: uid, gid: gid}, nil
	}
	return nil, fmt.Errorf("running as root, and neither user postgres nor user nobody exists: initdb rejects root, so create one of them or run as another user")
}

// credential returns the credential for exec.Cmd, or nil to keep the
// current user. An empty Groups list drops root's supplementary groups.
func (a *serverAccount) credential() *syscall.Credential {
	if a == nil {
		return nil
	}
	return &syscall.Credential{Uid: uint32(a.uid), Gid: uint32(a.gid), Groups: []uint32{}}
}

// chown gives path to the account; without an account it does nothing.
func (a *serverAccount) chown(path string) error {
	if a == nil {
		return nil
	}
	if err := os.Chown(path, a.uid, a.gid); err != nil {
		return fmt.Errorf("give %s to user %s: %w", path, a.name, err)
	}
	return nil
}

// describe returns a note for error messages that names the account the
// server runs as, or "" when it runs as the current user.
func (a *serverAccount) describe() string {
	if a == nil {
		return ""
	}
	return fmt.Sprintf(" (running as user %s, which must be able to reach every parent directory)", a.name)
}
