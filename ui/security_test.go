package ui_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jetsaga/saga/examples/approval"
	"github.com/jetsaga/saga/ui"
)

// A UI without authentication answers only to loopback host names and
// the allowed ones: a page of another site that re-points its own name at
// this machine (DNS rebinding) sends that name, and is refused before it
// reads a page or its form token. With authentication the browser holds
// no credentials for that name, so the host is not checked.
func TestHostsOfAUIWithoutAuthentication(t *testing.T) {
	open := startEngine(t, nil, func(o *ui.Options) { o.AllowedHosts = []string{"ops.internal"} })
	get := func(e *engine, host string) response {
		req, err := http.NewRequest(http.MethodGet, e.ui.URL+"/sagas", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		return do(t, req)
	}
	for _, host := range []string{"evil.example:8233", "evil.example", "10.1.2.3:8233"} {
		r := get(open, host)
		wantCode(t, r, http.StatusMisdirectedRequest)
		if strings.Contains(r.body, "csrf") {
			t.Fatalf("a refused host got a page:\n%s", r.body)
		}
	}
	for _, host := range []string{"127.0.0.1:8233", "localhost:8233", "[::1]:8233", "ops.internal:8233"} {
		wantCode(t, get(open, host), http.StatusOK)
	}
	authed := startEngine(t, nil, func(o *ui.Options) { o.Token = "tok" })
	req, _ := http.NewRequest(http.MethodGet, authed.ui.URL+"/sagas", nil)
	req.Host = "ops.example.com"
	req.Header.Set("Authorization", "Bearer tok")
	wantCode(t, do(t, req), http.StatusOK)
}

// A browser posting on behalf of another site is refused, even with the
// form's token (which it could only have read through another hole).
func TestCrossSitePostsAreRefused(t *testing.T) {
	e := startEngine(t, nil)
	e.run(t, "approval", "ap-xs", approval.Input{RequestID: "r-xs", Amount: 10, Timeout: "1h"}, "")
	token := e.csrf(t, "ap-xs")
	form := url.Values{"csrf": {token}, "confirm": {"yes"}}
	for name, set := range map[string]func(*http.Request){
		"another origin":            func(r *http.Request) { r.Header.Set("Origin", "http://evil.example") },
		"a cross-site fetch":        func(r *http.Request) { r.Header.Set("Sec-Fetch-Site", "cross-site") },
		"an origin on another port": func(r *http.Request) { r.Header.Set("Origin", "http://127.0.0.1:1") },
	} {
		req, _ := http.NewRequest(http.MethodPost, e.ui.URL+"/sagas/ap-xs/wake", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		set(req)
		if r := do(t, req); r.code != http.StatusForbidden {
			t.Fatalf("%s: %d", name, r.code)
		}
	}
	// The page's own origin goes through.
	req, _ := http.NewRequest(http.MethodPost, e.ui.URL+"/sagas/ap-xs/wake", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", e.ui.URL)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	wantCode(t, do(t, req), http.StatusSeeOther)
}

// Only the stylesheet and the script are served as assets: no listing,
// no template source.
func TestOnlyTheAssetsAreServed(t *testing.T) {
	e := startEngine(t, nil)
	for _, path := range []string{"/assets/", "/assets/detail.html", "/assets/layout.html", "/assets/../ui.go"} {
		if r := e.get(t, path); r.code == http.StatusOK {
			t.Fatalf("%s served:\n%s", path, r.body)
		}
	}
	r := e.get(t, "/assets/ui.js")
	wantCode(t, r, http.StatusOK)
	if ct := r.hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/javascript") {
		t.Fatalf("ui.js served as %q", ct)
	}
	for _, h := range []string{"Content-Security-Policy", "X-Frame-Options", "Cache-Control"} {
		if r.hdr.Get(h) == "" {
			t.Fatalf("no %s on an asset", h)
		}
	}
}

// The status box of a saga's page shows only messages the server signed
// after an action: a link of another site cannot put its text there.
func TestActionMessagesAreTheServers(t *testing.T) {
	e := startEngine(t, nil)
	e.run(t, "approval", "ap-m", approval.Input{RequestID: "r-m", Amount: 10, Timeout: "1h"}, "")
	spoof := "Session expired: log in again at https://evil.example"
	r := e.get(t, "/sagas/ap-m?msg="+url.QueryEscape(spoof)+"&sig=forged")
	wantCode(t, r, http.StatusOK)
	if strings.Contains(r.body, "evil.example") {
		t.Fatalf("a forged message is shown:\n%s", r.body)
	}
	r = e.post(t, "/sagas/ap-m/wake", url.Values{"csrf": {e.csrf(t, "ap-m")}, "confirm": {"yes"}})
	wantCode(t, r, http.StatusSeeOther)
	page := e.get(t, r.hdr.Get("Location"))
	contains(t, page.body, `class="message"`, "woken")
}

// The page's script asks for JSON and gets the outcome itself: a message,
// or an error with the refusal's status (a cancel reason over the
// engine's 4 KiB is the caller's mistake: 400).
func TestActionsAnswerTheScriptInJSON(t *testing.T) {
	e := startEngine(t, nil)
	e.run(t, "approval", "ap-j", approval.Input{RequestID: "r-j", Amount: 10, Timeout: "1h"}, "")
	token := e.csrf(t, "ap-j")
	post := func(action string, form url.Values) (int, map[string]string) {
		req, _ := http.NewRequest(http.MethodPost, e.ui.URL+"/sagas/ap-j/"+action, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Accept", "application/json")
		r := do(t, req)
		var out map[string]string
		if err := json.Unmarshal([]byte(r.body), &out); err != nil {
			t.Fatalf("%s: not JSON (%v):\n%s", action, err, r.body)
		}
		return r.code, out
	}
	code, out := post("cancel", url.Values{"csrf": {token}, "confirm": {"yes"}, "reason": {strings.Repeat("x", 5000)}})
	if code != http.StatusBadRequest || out["error"] == "" {
		t.Fatalf("an oversized reason: %d %v", code, out)
	}
	code, out = post("cancel", url.Values{"csrf": {token}, "confirm": {"yes"}, "reason": {"no longer needed"}})
	if code != http.StatusOK || !strings.Contains(out["message"], "cancellation requested") {
		t.Fatalf("a cancel: %d %v", code, out)
	}
}

// A cancellation made by a user the UI authenticated is recorded with
// that user's name.
func TestCancelRecordsTheUser(t *testing.T) {
	e := startEngine(t, nil, func(o *ui.Options) { o.User, o.Password = "ops", "s3cret" })
	e.run(t, "approval", "ap-u", approval.Input{RequestID: "r-u", Amount: 10, Timeout: "1h"}, "")
	req, _ := http.NewRequest(http.MethodGet, e.ui.URL+"/sagas/ap-u", nil)
	req.SetBasicAuth("ops", "s3cret")
	page := do(t, req)
	m := csrfRE.FindStringSubmatch(page.body)
	if m == nil {
		t.Fatalf("no form token:\n%s", page.body)
	}
	form := url.Values{"csrf": {m[1]}, "confirm": {"yes"}, "reason": {"duplicate"}}
	req, _ = http.NewRequest(http.MethodPost, e.ui.URL+"/sagas/ap-u/cancel", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("ops", "s3cret")
	wantCode(t, do(t, req), http.StatusSeeOther)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := e.cl.Describe(ctx, "ap-u")
	if err != nil || d.CancelRequested == nil || d.CancelRequested.Identity != ui.ActionIdentity+" (ops)" {
		t.Fatalf("cancellation %+v, %v; want it recorded as asked by %q", d.CancelRequested, err, ui.ActionIdentity+" (ops)")
	}
}
