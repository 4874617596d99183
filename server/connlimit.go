package server

import "sync"

// connLimits counts the open websockets of this instance, in all and per
// token subject, against --max-connections and
// --max-connections-per-subject. It is safe for concurrent use.
type connLimits struct {
	mu        sync.Mutex
	total     int
	bySubject map[string]int
}

// acquire counts one more connection for subject ("" for anonymous or not
// yet authenticated) and returns "" or the limit that refuses it: "total"
// or "subject".
func (l *connLimits) acquire(subject string, maxTotal, maxPerSubject int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= maxTotal {
		return "total"
	}
	if subject != "" && l.bySubject[subject] >= maxPerSubject {
		return "subject"
	}
	l.total++
	if subject != "" {
		if l.bySubject == nil {
			l.bySubject = map[string]int{}
		}
		l.bySubject[subject]++
	}
	return ""
}

// addSubject counts a connection that authenticated after it opened under
// subject, and reports false when the subject is at its limit.
func (l *connLimits) addSubject(subject string, maxPerSubject int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.bySubject[subject] >= maxPerSubject {
		return false
	}
	if l.bySubject == nil {
		l.bySubject = map[string]int{}
	}
	l.bySubject[subject]++
	return true
}

// release forgets one connection of subject.
func (l *connLimits) release(subject string) {
	l.mu.Lock()
	l.total--
	l.mu.Unlock()
	l.releaseSubject(subject)
}

// releaseSubject forgets what addSubject counted.
func (l *connLimits) releaseSubject(subject string) {
	if subject == "" {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bySubject[subject]--
	if l.bySubject[subject] <= 0 {
		delete(l.bySubject, subject)
	}
}
