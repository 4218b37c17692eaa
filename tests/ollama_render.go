// Renders a Modelfile TEMPLATE the way Ollama renders a chat: its collate() joins the system
// messages into .System and still passes every message, system ones included, in .Messages
// (ollama/ollama template/template.go). Usage: go run ollama_render.go TEMPLATE_FILE MESSAGES_JSON
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
	for _, m := range messages {
		if m.Role == "system" {
			system = append(system, m.Content)
		}
	}
	t := template.Must(template.New("modelfile").Parse(string(text)))
	if err := t.Execute(os.Stdout, map[string]any{"System": strings.Join(system, "\n\n"), "Messages": messages}); err != nil {
		panic(err)
	}
}
