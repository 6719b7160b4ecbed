package devstack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/config"
)

// DevUser is an account the dev stack made, with its password.
type DevUser struct {
	ID, Localpart, Password string
}

// Dev is what SetUpDev made: an administrator (in admin.users), a demo user
// and the management room.
type Dev struct {
	Admin, Demo    DevUser
	ManagementRoom string
}

// SetUpDev gives a stack with a running homeserver (and the service not
// started yet, or restarted after) what an admin needs in their first hour:
// an admin and a demo account (passwords kept in the state folder, so a
// restart reuses them), and a management room the admin created, encrypted,
// with the admin in admin.users. Run it before StartService: the service
// reads admin.room when it starts.
func (s *Stack) SetUpDev(ctx context.Context) (*Dev, error) {
	var d Dev
	var err error
	if d.Admin, err = s.devUser(ctx, "admin", true); err != nil {
		return nil, err
	}
	if d.Demo, err = s.devUser(ctx, "demo", false); err != nil {
		return nil, err
	}
	roomFile := filepath.Join(s.Opts.StateDir, "management-room")
	if b, err := os.ReadFile(roomFile); err == nil {
		d.ManagementRoom = strings.TrimSpace(string(b))
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	} else {
		cli, err := s.LoginAs(ctx, d.Admin.Localpart, d.Admin.Password)
		if err != nil {
			return nil, err
		}
		resp, err := cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
			Preset: "private_chat", Name: "matrix-hipaa management",
			Topic: "Commands to the compliance bot: send !help",
			InitialState: []*event.Event{{Type: event.StateEncryption, Content: event.Content{
				Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}},
		})
		if err != nil {
			return nil, fmt.Errorf("create the management room: %w", err)
		}
		d.ManagementRoom = string(resp.RoomID)
		if err := config.WriteFileAtomic(roomFile, []byte(d.ManagementRoom+"\n"), 0o600); err != nil {
			return nil, err
		}
	}
	return &d, s.SetManagementRoom(d.ManagementRoom, d.Admin.ID)
}

// devUser makes localpart's account once; later runs read its password.
func (s *Stack) devUser(ctx context.Context, localpart string, admin bool) (DevUser, error) {
	u := DevUser{ID: "@" + localpart + ":" + s.Opts.ServerName, Localpart: localpart}
	file := filepath.Join(s.Opts.StateDir, localpart+".password")
	if pw, err := os.ReadFile(file); err == nil {
		u.Password = strings.TrimSpace(string(pw))
		return u, nil
	}
	u.Password = config.RandomToken()[:20]
	if _, err := s.CreateUser(ctx, localpart, u.Password, admin); err != nil {
		return u, err
	}
	return u, config.WriteFileAtomic(file, []byte(u.Password), 0o600)
}

// AddUser creates an account on the stack's homeserver with a new password.
func (s *Stack) AddUser(ctx context.Context, localpart string) (DevUser, error) {
	u := DevUser{ID: "@" + localpart + ":" + s.Opts.ServerName, Localpart: localpart, Password: config.RandomToken()[:20]}
	_, err := s.CreateUser(ctx, localpart, u.Password, false)
	return u, err
}

// LoginAs logs in with a password, as Element would.
func (s *Stack) LoginAs(ctx context.Context, localpart, password string) (*mautrix.Client, error) {
	cli, err := mautrix.NewClient(s.HSURL, "", "")
	if err != nil {
		return nil, err
	}
	_, err = cli.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
		Password: password, StoreCredentials: true})
	return cli, err
}
