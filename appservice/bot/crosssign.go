package bot

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/id"
)

// Identity is where the bot's own cross-signing stands.
type Identity struct {
	// MasterKey is the bot's cross-signing master key (kept in our store).
	MasterKey string
	// Published: the homeserver holds exactly that master key for the bot.
	// (If it holds another, uploaded by someone else, the bot keeps
	// trusting only its own keys and logs an error.)
	Published bool
}

// crossSigning gives the bot its own cross-signing keys: generated once,
// sealed in our store (so a restart or a relogin keeps the same identity)
// and published to the homeserver. With them the bot pins administrators'
// master keys (a signature by its user-signing key), which is what makes a
// command's sending device CrossSignedVerified; and once they are published,
// nobody can cross-sign a device of the bot on first use: a reset needs the
// account's password, which the as_token is not.
//
// Publishing is best effort: a homeserver that asks for the account's
// password (Dendrite 0.13) gets bot.password_file when one is configured;
// without it the keys stay local, which is enough for the pins.
func (b *Bot) crossSigning(ctx context.Context, mach *crypto.OlmMachine) (Identity, error) {
	seeds, ident, err := b.loadOrMakeSeeds(ctx)
	if err != nil {
		return ident, err
	}
	if err := mach.ImportCrossSigningKeys(seeds); err != nil {
		return ident, fmt.Errorf("import cross-signing keys: %w", err)
	}
	server, err := serverMasterKey(ctx, mach)
	if err != nil {
		return ident, err
	}
	switch server {
	case ident.MasterKey:
	case "":
		if err := mach.PublishCrossSigningKeys(ctx, mach.CrossSigningKeys, b.passwordAuth); err != nil {
			b.log.Warn().Str("error", err.Error()).Msg("the bot's cross-signing keys are kept but not published: the homeserver wants the bot account's password (set bot.password_file, see docs/deploy.md)")
			return ident, nil
		}
	default:
		b.log.Error().Msg("the homeserver holds cross-signing keys for the bot that this service did not make; the bot keeps trusting only its own (see docs/threat-model.md)")
		return ident, nil
	}
	ident.Published = true
	if _, err := b.opts.DB.W.ExecContext(ctx, `UPDATE bot_cross_signing SET published_master = $1 WHERE user_id = $2`, ident.MasterKey, b.opts.UserID); err != nil {
		return ident, err
	}
	// The bot's device, signed by its self-signing key, shows as verified
	// in people's clients.
	own := mach.OwnIdentity()
	if signed, _ := mach.CryptoStore.IsKeySignedBy(ctx, own.UserID, own.SigningKey, own.UserID, mach.CrossSigningKeys.SelfSigningKey.PublicKey()); !signed {
		if err := mach.SignOwnDevice(ctx, own); err != nil {
			b.log.Warn().Str("error", err.Error()).Msg("could not sign the bot's device with its self-signing key")
		}
	}
	return ident, nil
}

// passwordAuth answers the homeserver's request for the bot account's
// password, when one is configured.
func (b *Bot) passwordAuth(ui *mautrix.RespUserInteractive) any {
	if b.opts.Password == "" || !ui.HasSingleStageFlow(mautrix.AuthTypePassword) {
		return nil
	}
	localpart, _, _ := id.UserID(b.opts.UserID).Parse()
	return map[string]any{
		"type": mautrix.AuthTypePassword, "session": ui.Session, "user": localpart, "password": b.opts.Password,
		"identifier": mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
	}
}

// serverMasterKey is the master key the homeserver holds for the bot now
// (not the cached one).
func serverMasterKey(ctx context.Context, mach *crypto.OlmMachine) (string, error) {
	resp, err := mach.Client.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{mach.Client.UserID: mautrix.DeviceIDList{}}})
	if err != nil {
		return "", fmt.Errorf("query the bot's keys: %w", err)
	}
	if mk, ok := resp.MasterKeys[mach.Client.UserID]; ok {
		return mk.FirstKey().String(), nil
	}
	return "", nil
}

func (b *Bot) loadOrMakeSeeds(ctx context.Context) (crypto.CrossSigningSeeds, Identity, error) {
	var sealed, master, published string
	err := b.opts.DB.R.QueryRowContext(ctx, `SELECT sealed, master_key, published_master FROM bot_cross_signing WHERE user_id = $1`, b.opts.UserID).
		Scan(&sealed, &master, &published)
	if errors.Is(err, sql.ErrNoRows) {
		return b.makeSeeds(ctx)
	} else if err != nil {
		return crypto.CrossSigningSeeds{}, Identity{}, err
	}
	var seeds crypto.CrossSigningSeeds
	if err := b.open(sealed, &seeds); err != nil {
		return seeds, Identity{}, fmt.Errorf("the bot's cross-signing keys do not open with this key: %w", err)
	}
	return seeds, Identity{MasterKey: master, Published: published == master}, nil
}

func (b *Bot) makeSeeds(ctx context.Context) (crypto.CrossSigningSeeds, Identity, error) {
	var seeds crypto.CrossSigningSeeds
	seed := func() []byte {
		s := make([]byte, 32)
		rand.Read(s)
		return s
	}
	seeds.MasterKey, seeds.SelfSigningKey, seeds.UserSigningKey = seed(), seed(), seed()
	keys, err := seeds.Decode()
	if err != nil {
		return seeds, Identity{}, err
	}
	master := keys.MasterKey.PublicKey().String()
	sealed, err := b.seal(seeds)
	if err != nil {
		return seeds, Identity{}, err
	}
	// Two processes starting at once keep whichever wrote first.
	if _, err := b.opts.DB.W.ExecContext(ctx, `INSERT INTO bot_cross_signing (user_id, sealed, master_key, created_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id) DO NOTHING`, b.opts.UserID, sealed, master, time.Now().UnixMilli()); err != nil {
		return seeds, Identity{}, err
	}
	b.log.Info().Str("master_key", master).Msg("the bot has cross-signing keys of its own")
	return b.loadOrMakeSeeds(ctx) // the row now exists: ours, or a racing process's
}

// sealKey is the AES key of the sealed seeds: its own derivation of the
// pickle key, which already guards the rest of the bot's crypto state.
func (b *Bot) sealKey() cipher.AEAD {
	m := hmac.New(sha256.New, b.opts.PickleKey)
	m.Write([]byte("matrix-hipaa bot cross-signing seeds v1"))
	block, _ := aes.NewCipher(m.Sum(nil))
	aead, _ := cipher.NewGCM(block)
	return aead
}

func (b *Bot) seal(v any) (string, error) {
	plain, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	aead := b.sealKey()
	nonce := make([]byte, aead.NonceSize())
	rand.Read(nonce)
	return base64.RawStdEncoding.EncodeToString(aead.Seal(nonce, nonce, plain, []byte(b.opts.UserID))), nil
}

func (b *Bot) open(sealed string, v any) error {
	raw, err := base64.RawStdEncoding.DecodeString(sealed)
	aead := b.sealKey()
	if err != nil || len(raw) < aead.NonceSize() {
		return errors.New("malformed")
	}
	plain, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], []byte(b.opts.UserID))
	if err != nil {
		return err
	}
	return json.Unmarshal(plain, v)
}

// ErrKeyChanged is returned by pinAdmin when an administrator's master key
// is not the one the bot pinned.
var ErrKeyChanged = errors.New("the administrator's cross-signing master key is not the one the bot pinned")

// pinAdmin makes the bot trust an administrator's current master key if it
// has pinned none for them yet (trust on first use, recorded in
// admin_key_pin and signed with the bot's user-signing key), and reports
// whether it pinned one now. A key that differs from the pin is refused.
func (b *Bot) pinAdmin(ctx context.Context, mach *crypto.OlmMachine, user id.UserID) (bool, error) {
	keys, err := mach.CryptoStore.GetCrossSigningKeys(ctx, user)
	if err != nil {
		return false, err
	}
	mk, ok := keys[id.XSUsageMaster]
	if !ok {
		return false, nil
	}
	var pinned string
	err = b.opts.DB.R.QueryRowContext(ctx, `SELECT master_key FROM admin_key_pin WHERE user_id = $1`, string(user)).Scan(&pinned)
	switch {
	case err == nil && pinned != mk.Key.String():
		return false, ErrKeyChanged
	case err == nil:
	case errors.Is(err, sql.ErrNoRows):
		res, err := b.opts.DB.W.ExecContext(ctx, `INSERT INTO admin_key_pin (user_id, master_key, pinned_at) VALUES ($1, $2, $3) ON CONFLICT (user_id) DO NOTHING`,
			string(user), mk.Key.String(), time.Now().UnixMilli())
		if err != nil {
			return false, err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return b.pinAdmin(ctx, mach, user) // pinned meanwhile: compare again
		}
		if err := b.signMaster(ctx, mach, user, mk.Key); err != nil {
			return false, err
		}
		return true, nil
	default:
		return false, err
	}
	if signed, _ := mach.CryptoStore.IsKeySignedBy(ctx, user, mk.Key, mach.Client.UserID, mach.CrossSigningKeys.UserSigningKey.PublicKey()); !signed {
		return false, b.signMaster(ctx, mach, user, mk.Key)
	}
	return false, nil
}

// signMaster signs user's master key with the bot's user-signing key and
// stores the signature; it is uploaded too when the bot's keys are
// published (clients then see the administrator as verified by the bot).
func (b *Bot) signMaster(ctx context.Context, mach *crypto.OlmMachine, user id.UserID, master id.Ed25519) error {
	usk := mach.CrossSigningKeys.UserSigningKey
	obj := mautrix.ReqKeysSignatures{UserID: user, Usage: []id.CrossSigningUsage{id.XSUsageMaster},
		Keys: map[id.KeyID]string{id.NewKeyID(id.KeyAlgorithmEd25519, master.String()): master.String()}}
	sig, err := usk.SignJSON(obj)
	if err != nil {
		return err
	}
	if err := mach.CryptoStore.PutSignature(ctx, user, master, mach.Client.UserID, usk.PublicKey(), sig); err != nil {
		return err
	}
	if b.identity().Published {
		obj.Signatures = signatures.NewSingleSignature(mach.Client.UserID, id.KeyAlgorithmEd25519, usk.PublicKey().String(), sig)
		if resp, err := mach.Client.UploadSignatures(ctx, &mautrix.ReqUploadSignatures{user: {master.String(): obj}}); err != nil || len(resp.Failures) > 0 {
			b.log.Warn().Msg("could not upload the bot's signature of an administrator's master key (kept locally)")
		}
	}
	return nil
}
