// Renders a Modelfile TEMPLATE the way Ollama renders a chat: its collate() joins the system
// messages into .System, merges consecutive messages of one role, and still passes every message,
// system ones included, in .Messages (ollama/ollama template/template.go).
// Usage: go run ollama_render.go TEMPLATE_FILE MESSAGES_JSON
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	text, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	raw, err := os.ReadFile(os.Args[2])
	if err != nil {
		panic(err)
	}
	var messages []Message
	if err := json.Unmarshal(raw, &messages); err != nil {
		panic(err)
	}
	var system []string
	var collated []Message
	for _, m := range messages {
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if n := len(collated); n > 0 && collated[n-1].Role == m.Role {
			collated[n-1].Content += "\n\n" + m.Content
		} else {
			collated = append(collated, m)
		}
	}
	t := template.Must(template.New("modelfile").Parse(string(text)))
	data := map[string]interface{}{"System": strings.Join(system, "\n\n"), "Messages": collated}
	if err := t.Execute(os.Stdout, data); err != nil {
		panic(err)
	}
}
