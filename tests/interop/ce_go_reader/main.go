// ce_go_reader reads a Kafka topic with the CloudEvents Go SDK's Kafka binding (Sarama) and
// prints one JSON line per record: how a consumer that is not the Python SDK sees buy's events.
//
// It reads every partition from its oldest offset up to the high-water mark taken at start,
// so it always ends by itself; -max and -timeout bound it further.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/cloudevents/sdk-go/protocol/kafka_sarama/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
)

type line struct {
	Partition int32           `json:"partition"`
	Offset    int64           `json:"offset"`
	Key       string          `json:"key"`
	Headers   []string        `json:"headers"`
	Event     json.RawMessage `json:"event,omitempty"`
	Error     string          `json:"error,omitempty"`
}

func describe(message *sarama.ConsumerMessage) line {
	out := line{Partition: message.Partition, Offset: message.Offset, Key: string(message.Key)}
	for _, header := range message.Headers {
		out.Headers = append(out.Headers, string(header.Key))
	}
	sort.Strings(out.Headers)
	event, err := binding.ToEvent(context.Background(), kafka_sarama.NewMessageFromConsumerMessage(message))
	if err != nil {
		out.Error = "decode: " + err.Error()
		return out
	}
	if err := event.Validate(); err != nil {
		out.Error = "validate: " + err.Error()
		return out
	}
	encoded, err := json.Marshal(event)
	if err != nil {
		out.Error = "encode: " + err.Error()
		return out
	}
	out.Event = encoded
	return out
}

func main() {
	bootstrap := flag.String("bootstrap", "127.0.0.1:9092", "comma-separated Kafka bootstrap servers")
	topic := flag.String("topic", "purchases", "topic to read")
	maxRecords := flag.Int("max", 100000, "stop after this many records")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after this long")
	flag.Parse()

	config := sarama.NewConfig()
	config.ClientID = "ce-go-reader"
	config.Version = sarama.V3_0_0_0
	config.Net.DialTimeout = 5 * time.Second
	client, err := sarama.NewClient(strings.Split(*bootstrap, ","), config)
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(2)
	}
	defer client.Close()
	partitions, err := client.Partitions(*topic)
	if err != nil {
		fmt.Fprintln(os.Stderr, "partitions:", err)
		os.Exit(2)
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		fmt.Fprintln(os.Stderr, "consumer:", err)
		os.Exit(2)
	}
	defer consumer.Close()

	lines := make(chan line)
	var readers sync.WaitGroup
	for _, partition := range partitions {
		end, err := client.GetOffset(*topic, partition, sarama.OffsetNewest)
		if err != nil {
			fmt.Fprintln(os.Stderr, "end offset:", err)
			os.Exit(2)
		}
		start, err := client.GetOffset(*topic, partition, sarama.OffsetOldest)
		if err != nil {
			fmt.Fprintln(os.Stderr, "start offset:", err)
			os.Exit(2)
		}
		if start >= end {
			continue
		}
		reader, err := consumer.ConsumePartition(*topic, partition, start)
		if err != nil {
			fmt.Fprintln(os.Stderr, "consume:", err)
			os.Exit(2)
		}
		readers.Add(1)
		go func(reader sarama.PartitionConsumer, end int64) {
			defer readers.Done()
			defer reader.AsyncClose()
			for message := range reader.Messages() {
				lines <- describe(message)
				if message.Offset+1 >= end {
					return
				}
			}
		}(reader, end)
	}
	go func() { readers.Wait(); close(lines) }()

	deadline := time.After(*timeout)
	encoder := json.NewEncoder(os.Stdout)
	for count := 0; count < *maxRecords; count++ {
		select {
		case out, open := <-lines:
			if !open {
				return
			}
			if err := encoder.Encode(out); err != nil {
				os.Exit(2)
			}
		case <-deadline:
			fmt.Fprintf(os.Stderr, "timed out after %s with %d records\n", *timeout, count)
			os.Exit(3)
		}
	}
}
