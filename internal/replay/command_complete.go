package replay

import "github.com/jetsaga/saga/stream"

// completeCommand ends the workflow: completed with its output, or failed.
// Whether it completed or failed is the decision; the output is not
// compared. It has no result: commit ends it.
type completeCommand struct {
	commandBase
	typ        stream.EventType
	attributes any
}

func newCompleteCommand(out stream.Payload, failure *stream.Failure) *completeCommand {
	if failure != nil {
		return &completeCommand{typ: stream.WorkflowExecutionFailed, attributes: &stream.WorkflowExecutionFailedAttrs{Failure: failure}}
	}
	return &completeCommand{typ: stream.WorkflowExecutionCompleted, attributes: &stream.WorkflowExecutionCompletedAttrs{Output: out}}
}

func (c *completeCommand) eventType() stream.EventType { return c.typ }

func (c *completeCommand) attrs() any { return c.attributes }

func (c *completeCommand) describe() string { return string(c.typ) }

func (c *completeCommand) matches(stream.Event) bool { return true }

func (c *completeCommand) commit(*Machine, stream.Event) error {
	c.state = stateDone
	return nil
}
